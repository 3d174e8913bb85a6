"""What the notebooks share: recording rows, interval text, verdict lines.

A notebook defines only what it alone needs; anything two chapters would write alike lives here,
so that (for instance) every chapter's "mean ± 95 % CI" comes from one function.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from wm.metrics import mean_ci


def record(results, method: str, model: str, experiment: str, metrics: dict[str, float], *, seed: int,
           attack: str = "none", strength: Any = None, case: str = "") -> None:
    """One row of RESULTS (a wm.results.Results) per metric of METRICS."""
    for metric, value in metrics.items():
        results.add(method=method, model=model, experiment=experiment, attack=attack, strength=strength,
                    seed=seed, metric=metric, value=value, case=case)


def interval(values) -> tuple[float, float]:
    """Mean and 95 % Student-t half-width of the finite VALUES (wm.metrics.mean_ci): NaN values are
    left out, and the half-width of a single value is NaN (its spread is unknown), never 0."""
    v = np.asarray(list(values), dtype=float)
    v = v[~np.isnan(v)]
    return mean_ci(v) if len(v) else (float("nan"), float("nan"))


def ci_text(values, scale: float = 1.0, digits: int = 2) -> str:
    """"m ± h" of VALUES × SCALE (only "m" where the interval is unknown: one value)."""
    m, h = interval(values)
    return f"{scale * m:.{digits}f}" + ("" if math.isnan(h) else f" ± {scale * h:.{digits}f}")


VERDICTS = {True: "Holds here.", False: "Does not hold here.", "partly": "Partly holds here.",
            "measured": "Measured (the paper states no number to test):"}


def verdict(level: bool | str, text: str) -> str:
    """A verdict line: LEVEL is True (holds), False (does not hold), "partly" or "measured"."""
    return f"**{VERDICTS[level]}** {text}"
