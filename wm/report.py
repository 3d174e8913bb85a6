"""What the notebooks share: recording rows, interval text, verdict lines.

A notebook defines only what it alone needs; anything two chapters would write alike lives here,
so that (for instance) every chapter's "mean ± 95 % CI" comes from one function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from wm.metrics import mean_ci


def record(results, method: str, model: str, experiment: str, metrics: dict[str, float], *, seed: int,
           attack: str = "none", strength: Any = None, case: str = "") -> None:
    """One row of RESULTS (a wm.results.Results) per metric of METRICS."""
    for metric, value in metrics.items():
        results.add(method=method, model=model, experiment=experiment, attack=attack, strength=strength,
                    seed=seed, metric=metric, value=value, case=case)


def by_metric(frame, experiment: str, index: tuple[str, ...], names: dict[str, str] | None = None):
    """EXPERIMENT's rows of a results FRAME as one row per measurement (the INDEX columns) and one
    column per metric, renamed by NAMES for reading: how the study chapters read their tables back."""
    part = frame[frame.experiment == experiment]
    wide = part.set_index([*index, "metric"]).value.unstack("metric").reset_index()
    wide.columns.name = None
    return wide.rename(columns=names or {})


def show_sweep(results, study: str, cfg, merged, drop: tuple[str, ...] = ()):
    """Load the sweep MERGED of STUDY over seeds into RESULTS (wm.results.load_merged; the rows of
    the experiments in DROP left out, for the chapter to recompute) and record its runs' wall time
    in the sidecar (parameters["build"]: the chapter's own time is only the view's).
    Returns the runs: seed → total seconds, threads, device and folder."""
    from wm.results import load_merged
    rows, runs = load_merged(study, cfg, merged, drop)
    for row in rows:
        results.add(**row)
    results.provenance["parameters"]["build"] = [
        {"parameters": f"seed={s}" + (f", parts={r.parts}" if "parts" in runs else ""), "minutes": round(r.total / 60, 2),
         "threads": r.threads, "device": r.device}
        for s, r in runs.iterrows()]
    return runs


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


def k_of(flags) -> str:
    """"k/n": on how many of the seeds (or runs) the 0/1 FLAGS hold."""
    import pandas as pd
    flags = pd.Series(list(flags), dtype=float)
    return f"{int(flags.sum())}/{len(flags)}"


VERDICTS = {True: "Holds here.", False: "Does not hold here.", "partly": "Partly holds here.",
            "measured": "Measured (the paper states no number to test):",
            "not testable": "Not testable here."}


def verdict(level: bool | str, text: str) -> str:
    """A verdict line: LEVEL is True (holds), False (does not hold), "partly", "measured" or "not
    testable" (the comparison's control cannot fail)."""
    return f"**{VERDICTS[level]}** {text}"


# ---------------------------------------------------------------------------------------------
# The attack suite's table read back (wm.suite writes it): one row per run, and methods × attacks
# ---------------------------------------------------------------------------------------------

UTILITY_METRICS = {"test accuracy": "test_acc", "PSNR (dB)": "psnr"}
"""A method's unit of utility → the results table's metric."""


def utility_metric(method) -> str:
    """The metric holding METHOD's utility (a wm.methods.Method)."""
    return UTILITY_METRICS[method.unit]


def cost_scale(name: str) -> tuple[float, str]:
    """How a utility difference of method NAME is shown: ×100 in accuracy points, or dB as it is."""
    from wm.methods import REGISTRY
    return (100.0, "points") if REGISTRY[name].unit == "test accuracy" else (1.0, "dB")


def utility_cost(name: str, before: float, after: float) -> float:
    """What an attack cost a model of method NAME, in its unit (accuracy points, or dB of PSNR)."""
    return (before - after) * cost_scale(name)[0]


def wide(frame):
    """The rows of experiment `suite` (a Results frame, or the CSV read back by wm.results.load) as
    one row per run: method, model, attack, strength, seed, one column per metric, and `for` (the
    method a row speaks about: its own, or the one a control row controls for), `role`
    (watermarked or control) and `utility` (the method's own utility metric)."""
    import pandas as pd
    from wm.methods import REGISTRY
    f = frame[frame.experiment == "suite"].copy()
    f["strength"] = f["strength"].astype(str)
    w = f.pivot_table(index=["method", "model", "attack", "strength", "seed"], columns="metric", values="value",
                      aggfunc="first", sort=False).reset_index()
    w.columns.name = None
    w["for"] = [model.split(":control_", 1)[1] if meth == "none" else meth for meth, model in zip(w.method, w.model)]
    w["role"] = ["control" if meth == "none" else "watermarked" for meth in w.method]
    nan = pd.Series(float("nan"), index=w.index)
    w["utility"] = [w.get(utility_metric(REGISTRY[f_]), nan)[i] for i, f_ in zip(w.index, w["for"])]
    if "score" not in w:
        w["score"] = nan
    return w


def summary(w, cfg):
    """Methods × attacks from the runs of `wide` (CFG: a wm.suite.Config): where the watermark
    survives on every seed, on some, where a majority of seeds lost it first and what the attacked
    model had lost there, the erasure that cost the model least, whether one cost at most the
    'cheap' budget (useful_drop, useful_psnr_drop), and how often the detector accepted the attacked
    twin. A cell outside a method's plan gets its reason."""
    import pandas as pd
    from wm import suite
    from wm.methods import REGISTRY
    rows = []
    for method in cfg.methods:
        scale, unit = cost_scale(method)
        cheap = cfg.useful_psnr_drop if unit == "dB" else 100 * cfg.useful_drop
        mine = w[(w["for"] == method) & (w.role == "watermarked")]
        base = mine[mine.attack == "none"].utility.mean()
        for attack in cfg.attacks:
            grid = [suite.fmt(s) for s in cfg.grid(method, attack)]
            if not grid:
                rows.append({"method": method, "attack": attack, "survives on every seed": "not run",
                             "note": suite.reason(REGISTRY[method], attack)})
                continue
            runs = mine[mine.attack == attack]
            share = runs.groupby("strength").verified.mean()
            cost = runs.groupby("strength").utility.mean().map(lambda u: utility_cost(method, base, u))
            kept = [s for s in grid if share.get(s, float("nan")) == 1]
            some = [s for s in grid if 0 < share.get(s, float("nan")) < 1]
            lost = [s for s in grid if share.get(s, float("nan")) < 0.5]
            ctl = w[(w["for"] == method) & (w.role == "control") & (w.attack == attack)]
            first = lost[0] if lost else None
            cheapest = min(lost, key=cost.get) if lost else None
            rows.append({
                "method": method, "attack": attack,
                "survives on every seed": ", ".join(kept) or "none",
                "on some seeds": ", ".join(f"{s} ({share[s]:.0%})" for s in some),
                "erased (majority) from": first or "never",
                "utility cost there": f"{cost[first]:.2f} {unit}" if first else "",
                "cheapest erasure": f"{cheapest} ({cost[cheapest]:.2f} {unit})" if lost else "",
                "cheap erasure": bool(any(cost[s] <= cheap for s in lost)),
                "max utility cost while surviving": f"{max(cost[s] for s in kept):.2f} {unit}" if kept else "",
                "control fired": f"{int(ctl.verified.sum())}/{len(ctl)}",
                "note": "",
            })
    return pd.DataFrame(rows)


def decision_metrics(marked, null, fprs=(0.01, 0.001)) -> list[tuple[str, dict[str, float]]]:
    """What the book reports of a detector against a null population, as (FPR level, metrics)
    pairs for `record` (the level goes in the row's `case`, e.g. "fpr=0.01"): TPR at each FPR,
    its threshold, the empirical FPR and its Clopper-Pearson upper bound; and the ROC AUC once
    (level "all")."""
    from wm.metrics import roc_auc, tpr_at_fpr
    out = []
    for level in fprs:
        d = tpr_at_fpr(marked, null, level)
        out.append((f"fpr={level:g}", {"tpr_at_fpr": d.tpr, "threshold": d.threshold, "fpr": d.fpr,
                                       "fpr_upper": d.fpr_upper}))
    out.append(("all", {"auc": roc_auc(marked, null)}))
    return out


# ---------------------------------------------------------------------------------------------
# Verdict rules that can fail
# ---------------------------------------------------------------------------------------------
#
# Verdict rules that can fail (issue 17, item 5): each rule states itself in words (`rule`),
# takes a small table of per-seed measurements and returns a `Verdict` whose text repeats the rule
# next to what it found. tests/test_verdicts.py feeds every rule a table where the claim is false.
#
# * `beats_ablation`: a method's robustness claim against its own ablation at equal attack strength
#   (WaterMAS against freeze-only): the claim holds only where the method's detector score beats the
#   ablation's by a margin whose 95 % interval over seeds lies above zero, at some strength, and is
#   significantly worse at none.
# * `pirate_resisted`: a pirate counts as resisted only on seeds where the owner's mark still
#   verifies after the piracy and the pirate's own mark does not verify at a cheap utility cost.
# * `attacker_fails`: a claim that an attack (piracy, removal) fails holds only where the attacker
#   reached its goal on no seed of any setting; it does not hold where the attacker reached it on
#   every seed of some setting, and holds partly otherwise (seed-dependent).
# * `holds_across`: a claim over settings (every surrogate carries the logo) holds only where it
#   holds on every seed of every setting; it does not hold where it holds nowhere.
# * `ratio_holds`: a "sharper than its ablation" claim holds only where the ratio reaches its
#   bound on every seed, not on average.
# * `baseline_decodes`: a comparison with a baseline is testable only where the baseline decodes
#   unattacked (its unattacked score reaches its own rule on every seed); otherwise "not testable".


@dataclass(frozen=True)
class Verdict:
    level: bool | str
    """True (holds), False (does not hold), "partly" or "not testable"."""
    rule: str
    found: str

    def text(self) -> str:
        word = {True: "Holds", False: "Does not hold", "partly": "Partly holds",
                "not testable": "Not testable"}[self.level]
        return f"**{word}.** {self.explain()}"

    def explain(self) -> str:
        """The rule and what it found, without the verdict's word (for a chapter's own verdict line)."""
        return f"Rule: {self.rule} Found: {self.found}"


def beats_ablation(table, costs: tuple[float, float] | None = None, tolerance: float = 1.0,
                   unit: str = "dB") -> Verdict:
    """TABLE: columns strength, seed, method_score, ablation_score (the same seed and attack
    strength for both). Paired per seed, so seed-to-seed variation cancels. COSTS: the method's
    and the ablation's mean cost of marking (e.g. the marked outputs' PSNR against the unmarked,
    in UNIT); where they differ by more than TOLERANCE the marks are not of equal strength (the
    more visible one survives more for that alone) and the comparison is not testable."""
    rule = ("the method's score exceeds its ablation's at equal attack strength, the 95 % interval of the "
            "paired difference over seeds above 0 at one strength at least and below 0 at none.")
    if costs is not None:
        rule += f" Compared only where both marks cost the same within {tolerance:g} {unit}."
    better, worse = [], []
    for strength, g in table.groupby("strength", sort=False):
        m, h = interval(g.method_score - g.ablation_score)
        if h == h and m - h > 0:  # h is NaN with one seed: nothing is significant then
            better.append(str(strength))
        elif h == h and m + h < 0:
            worse.append(str(strength))
    found = (f"significantly better at {', '.join(better) or 'no strength'}; "
             f"significantly worse at {', '.join(worse) or 'no strength'}.")
    level = bool(better) and not worse
    if costs is not None and not abs(costs[0] - costs[1]) <= tolerance:
        return Verdict("not testable", rule, f"the marks differ in cost ({costs[0]:.1f} against {costs[1]:.1f} {unit}); "
                                             f"at face value: {found}")
    return Verdict(level if not (better and worse) else "partly", rule, found)


def pirate_resisted(table, cheap: float) -> Verdict:
    """TABLE: one row per seed (and piracy strength): owner_verified, pirate_verified (0/1) and
    cost (the utility the piracy cost, in the method's unit). CHEAP: the largest cost a pirate
    accepts."""
    rule = (f"on every seed the owner's mark still verifies after piracy, and the pirate's own mark does not "
            f"verify at a cost ≤ {cheap:g}.")
    resisted = (table.owner_verified == 1) & ~((table.pirate_verified == 1) & (table.cost <= cheap))
    owner_lost = int((table.owner_verified != 1).sum())
    found = (f"resisted on {int(resisted.sum())} of {len(table)} runs; the owner's own mark failed on "
             f"{owner_lost}.")
    level = bool(len(table)) and bool(resisted.all()) or ("partly" if resisted.any() else False)
    return Verdict(level, rule, found)


def attacker_fails(table, goal: str) -> Verdict:
    """TABLE: one row per setting and seed: setting, seed, success (0/1: the attacker reached
    GOAL, e.g. "the pirate's mark verifies on a useful model", on that seed in that setting)."""
    rule = (f"{goal} on no seed in any setting; it does not hold where that happens on every seed of a "
            f"setting, and holds partly where it happens on some seeds only.")
    by = table.groupby("setting", sort=False).success
    always = [str(k) for k, g in by if bool((g == 1).all())]
    ever = [str(k) for k, g in by if bool((g == 1).any())]
    seeds = table.seed.nunique()
    found = (f"over {seeds} seeds and {table.setting.nunique()} settings: on every seed in "
             f"{len(always)} ({'; '.join(always) or 'none'}); on some seed in {len(ever)}.")
    level = True if not ever else (False if always else "partly")
    return Verdict(level if len(table) else "not testable", rule, found)


def holds_across(table, goal: str) -> Verdict:
    """TABLE: one row per setting and seed: setting, seed, success (0/1: GOAL reached on that seed
    in that setting, e.g. "R succeeds on ≥ 0.8 of a surrogate's outputs")."""
    rule = (f"{goal} on every seed in every setting; it does not hold where that happens on no seed in any "
            f"setting, and holds partly otherwise.")
    per = table.groupby("setting", sort=False).success.agg(lambda g: f"{int((g == 1).sum())}/{len(g)}")
    found = "; ".join(f"{k} {v}" for k, v in per.items()) + " seeds." if len(table) else "nothing measured."
    ok = table.success == 1
    level = "not testable" if not len(table) else True if ok.all() else False if not ok.any() else "partly"
    return Verdict(level, rule, found)


def ratio_holds(ratios, strong: float, weak: float, what: str) -> Verdict:
    """RATIOS: one ratio per seed (a method's measurement over its ablation's). Holds where every
    seed's ratio reaches STRONG, partly where every seed's exceeds WEAK, else does not hold."""
    import pandas as pd
    r = pd.Series(list(ratios), dtype=float)
    rule = (f"{what} reaches {strong:g}× on every seed (partly: above {weak:g}× on every seed).")
    m, h = interval(r)
    found = (f"{', '.join(f'{v:.2f}×' for v in r)} over {len(r)} seeds (mean {m:.2f}"
             + ("" if h != h else f" ± {h:.2f}") + ").")
    level = bool(len(r)) and bool((r >= strong).all()) or ("partly" if len(r) and (r > weak).all() else False)
    return Verdict(level, rule, found)


def baseline_decodes(unattacked_verified) -> Verdict:
    """UNATTACKED_VERIFIED: the baseline's own rule on its unattacked outputs, one 0/1 per seed."""
    import pandas as pd
    v = pd.Series(list(unattacked_verified), dtype=float)
    rule = "the baseline verifies unattacked on every seed (else a comparison with it cannot fail)."
    found = f"verified unattacked on {int(v.sum())} of {len(v)} seeds."
    return Verdict(True if len(v) and v.eq(1).all() else "not testable", rule, found)
