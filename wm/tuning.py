"""Held-out tuning: hyper-parameters once chosen on reported data, chosen again on a validation
split that no reported number touches (issue 17, item 4).

Null embedding's peak learning rate (0.1) and its stamp share (0.25) were chosen on the
Fashion-MNIST test split that the null-embedding chapter reports. Here each seed s holds out
`n_val` images of its own draw of the *training* split; every candidate trains on the rest with the
chapter's recipe (wm.null_embedding.Config at the same profile, the party-s signature), a clean
and a watermarked model, and is scored on the held-out images only. No test image is read. A
stated rule (`choose_lr`, `choose_fraction`) picks the value over seeds, and the chapter says
whether it agrees with the value the null-embedding chapter uses.

Like the study chapters, a run covers seeds seed … seed+seeds−1 and its tables are read back from
the results (`tables`), so a sweep of one-seed runs (`python -m wm sweep tuning --grid seed=0,1,2
-p seeds 1`, shown with `merged`) gives the same chapter.

What is still chosen on reported data (the image study's invisibility weight and surrogate layout)
is listed in the chapter; it is not re-tuned here yet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace

import pandas as pd

from wm import data
from wm import null_embedding as ne
from wm.config import FASHION_TRAIN, MAX_SEED, MAX_SEEDS, StudyConfig, param, parse_budget, require
from wm.progress import Laps
from wm.report import by_metric, interval, record
from wm.train import evaluate

LR, FRACTION = "tune lr", "tune stamp_fraction"
"""The experiments of the table: null embedding's learning rate and stamp share."""
METHOD = "null_embedding"
VALIDATION = "validation"
"""Every accuracy in this table is measured on the validation split (metric test_acc, as in
WaterMAS's validation rows); `case` names the candidate and the split."""
FIDELITY_POINTS = 1.0
"""The stamp-share rule's tolerance: a larger share (more passes per step) is worth it only where
it gains more than this many points of validation accuracy or acc_null."""


@dataclass
class Config(StudyConfig):
    """Parameters of the tuning notebook. Everything else (model, epochs, λ, n, batch, clip, the
    signatures) is the null-embedding chapter's Config at the same profile."""

    profile: str = "cpu"
    """smoke, cpu or gpu (resolved from auto)."""
    seed: int = param(0, ge=0, le=MAX_SEED)
    """First seed: seed s draws its own training order and validation split, and party s signs."""
    seeds: int = param(3, ge=1, le=MAX_SEEDS)
    """Repetitions of every candidate (mean ± 95 % CI over seeds)."""
    merged: str = ""
    """A sweep of this notebook over seeds (its merged table): show it, train nothing."""
    n_val: int = param(5000, ge=1, le=FASHION_TRAIN)
    """Validation images, held out of each seed's draw of the training split; the candidates train
    on the rest of the null-embedding chapter's n_train."""
    ne_lrs: tuple = param((0.025, 0.05, 0.1, 0.2), gt=0, le=10)
    """Candidate peak learning rates of null embedding (clean and watermarked models)."""
    ne_fractions: tuple = param((0.25, 1.0), gt=0, le=1)
    """Candidate stamp shares of null embedding, trained at the null-embedding chapter's lr."""
    ne_budget: str = ""
    """Overrides of the null-embedding recipe, "name=value,..." (e.g. "n_train=256,epochs=0.25"
    for a test); empty: the null-embedding chapter's own at this profile, which the tuned values
    are for."""

    PROFILE_DEFAULTS = {"smoke": dict(seeds=2, n_val=300, ne_lrs=(0.05, 0.1)), "cpu": dict(), "gpu": dict()}

    def ne(self) -> ne.Config:
        """The null-embedding chapter's Config at this profile: the recipe the candidates vary."""
        return ne.Config.from_profile(self.profile, seed=self.seed, **parse_budget(self.ne_budget, "ne_budget"))

    def check(self) -> None:
        try:
            base = self.ne()
        except ValueError as err:
            raise ValueError(f"ne_budget={self.ne_budget!r}: {err}") from None
        require(base.n_train - self.n_val >= base.batch_size, "n_val", self.n_val,
                f"at most the null-embedding n_train ({base.n_train}) less one batch ({base.batch_size})")


def run_seed(cfg: Config, s: int, results, device) -> dict[str, float]:
    """Every candidate for seed S, recorded in RESULTS; returns seconds per experiment."""
    base = cfg.ne()
    # n_test=1: load_classification always draws a test subset; nothing here reads it
    ds = data.load_classification("fashion_mnist", n_train=base.n_train, n_test=1, seed=s, device=device)
    x_val, y_val = ds.x_train[:cfg.n_val], ds.y_train[:cfg.n_val]
    x, y = ds.x_train[cfg.n_val:], ds.y_train[cfg.n_val:]
    sig = base.party(s).sign(base.timestamp)
    own = base.watermark(sig)
    lap = Laps()

    clean_models, marked_models = {}, {}  # one model per recipe: the lr grid and the share grid share one

    def measure(experiment, case, lr, fraction):
        recipe = dataclasses.replace(base, lr=lr, stamp_fraction=fraction)
        if lr not in clean_models:  # the clean model does not depend on the stamp share
            clean_models[lr] = ne.train_model(recipe, x, y, seed=s)[0]
        if (lr, fraction) not in marked_models:
            marked_models[lr, fraction] = ne.train_model(recipe, x, y, seed=s, wm=own)[0]
        clean, marked = clean_models[lr], marked_models[lr, fraction]
        v = ne.verify(marked, sig, x_val, y_val, recipe.n, recipe.lam, 10, recipe.threshold)
        record(results, "none", recipe.model, experiment, {"test_acc": evaluate(clean, x_val, y_val)}, seed=s, case=case)
        record(results, METHOD, recipe.model, experiment,
               {"test_acc": evaluate(marked, x_val, y_val), "wm_acc_null": v.acc_null, "wm_acc_true": v.acc_true,
                "verified": float(v.verified)}, seed=s, case=case)

    for lr in cfg.ne_lrs:
        measure(LR, f"lr={lr:g} ({VALIDATION})", lr, base.stamp_fraction)
    lap("learning rate")
    for fraction in cfg.ne_fractions:  # at the chapter's lr
        measure(FRACTION, f"stamp_fraction={fraction:g} ({VALIDATION})", base.lr, fraction)
    lap("stamp share")
    return lap.seconds


NAMES = {"test_acc": "val acc", "wm_acc_null": "acc_null", "wm_acc_true": "acc_true"}


def tables(frame: pd.DataFrame) -> SimpleNamespace:
    """One row per (candidate, seed): the clean and the watermarked model's validation accuracy and
    the watermarked model's verification on the validation split, for each tuned value."""
    frame = frame.assign(seed=frame.seed.astype(int))
    out = {}
    for name, experiment in (("lr", LR), ("stamp_fraction", FRACTION)):
        w = by_metric(frame, experiment, ("method", "seed", "case"), NAMES)
        w[name] = w.case.str.extract(rf"{name}=([0-9.e+-]+)")[0].astype(float)
        marked = w[w.method == METHOD].drop(columns=["method", "case"])
        clean = w[w.method == "none"][["seed", name, "val acc"]].rename(columns={"val acc": "clean val acc"})
        out[name] = marked.merge(clean, on=["seed", name]).sort_values([name, "seed"]).reset_index(drop=True)
    return SimpleNamespace(**out)


def summary(per_seed: pd.DataFrame, name: str) -> pd.DataFrame:
    """Mean and 95 % half-width over seeds of every column, per candidate value NAME."""
    rows = []
    for value, part in per_seed.groupby(name):
        row = {name: value, "seeds": len(part)}
        for col in ("clean val acc", "val acc", "acc_null", "acc_true", "verified"):
            row[col], row[f"{col} ±"] = interval(part[col])
        rows.append(row)
    return pd.DataFrame(rows).set_index(name)


def choose_lr(per_seed: pd.DataFrame) -> float:
    """The rule for the learning rate: the candidate with the highest mean validation accuracy of
    the watermarked model over seeds (the model the chapter reports and the one whose cost the
    fidelity claim is about)."""
    return float(per_seed.groupby("lr")["val acc"].mean().idxmax())


def choose_fraction(per_seed: pd.DataFrame, points: float = FIDELITY_POINTS) -> float:
    """The rule for the stamp share: the smallest share (the cheapest: each stamped image is one
    more forward and backward pass) whose mean validation accuracy and acc_null are both within
    POINTS of the best share's."""
    means = per_seed.groupby("stamp_fraction")[["val acc", "acc_null"]].mean()
    near = (100 * (means.max() - means) <= points).all(axis=1)
    return float(near[near].index.min())


def paired_gap(per_seed: pd.DataFrame, name: str, a: float, b: float, col: str = "val acc") -> tuple[float, float]:
    """Mean and 95 % half-width over seeds of COL at NAME=a minus at NAME=b, in points (paired by seed)."""
    w = per_seed.pivot(index="seed", columns=name, values=col)
    return tuple(100 * v for v in interval(w[a] - w[b]))
