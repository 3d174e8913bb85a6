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

The image study's invisibility weight w_basic and its surrogates' width were chosen on the test
patches of seed 0. Here each seed holds out, by photo as the test split is, the last of the owner's
photos (validation for the owner's choice: w_basic) and the last of the thief's (validation for
the thief's choice: the surrogate width, chosen as a thief would, by how well the surrogate copies
the service, never by whether it carries the logo). Every candidate trains on the other photos with
the image chapter's recipe (wm.image_processing.Config at the same profile). The ResNet surrogates'
layout (pix2pix's or full resolution) and norm (BatchNorm or InstanceNorm), also first chosen on
test patches, are chosen again by the same thief's rule at the chapter's width (part `layout`).

The attack suite marks its image service on a smaller budget (its own stage 1: fewer pairs and
epochs), where the chapter's weight leaves the mark visible. Its weight is chosen the same way, by
the same rule, with M, H and R trained at the suite's budget on the owner's photos but the last
(part `suite`, experiment `tune suite w_basic`). Its thief's data budget (n_attacker_pairs), first
raised from 600 to 1500 pairs after probes on the suite's test pairs, is chosen again as a thief
would (part `thief`): the suite's surrogate attack at every candidate budget, on the thief's photos
but the last, scored by how well it copies the service on that last one.

A run may do some parts only (`parts`: ne, image, suite, layout, thief), so that a sweep splits the
long runs (`--grid seed=0,1,2 --grid parts=ne,image,suite,layout,thief`); the chapter's view needs
every part of every seed.

This module holds the Config, the null-embedding part, the tables and the rules; the image parts'
training (image, suite, layout, thief) is in wm.tuning_image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace

import pandas as pd

from wm import data
from wm import image_processing as ip
from wm import null_embedding as ne
from wm.config import FASHION_TRAIN, MAX_PAIRS, MAX_SEED, MAX_SEEDS, StudyConfig, param, parse_budget, require
from wm.progress import Laps
from wm.report import by_metric, interval, record
from wm.train import evaluate
from wm.tuning_image import (LAYOUT, SUITE_WEIGHT, THIEF, VALIDATION, WEIGHT, WIDTH, run_image,  # noqa: F401 (re-exported)
                             run_layout, run_suite_image, run_thief, suite_recipe)

LR, FRACTION = "tune lr", "tune stamp_fraction"
"""The experiments of the table: null embedding's learning rate and stamp share."""
PARTS = ("ne", "image", "suite", "layout", "thief")
"""What a run may do: null embedding's candidates, the image chapter's, the suite's weight, the
surrogates' layout and norm, the suite thief's budget."""
THIEF_DB = 0.25
"""The thief's budget rule's tolerance: more pairs (paid queries of the service) are worth it only
where they improve the copy's mean validation PSNR by more than this many dB."""
INVISIBLE_DB = 35.0
"""The invisibility bar of the image chapter's verdict 1 (PSNR of B′ against B)."""
WORKS, SILENT = 0.9, 0.05
"""The w_basic rule's constraints: R finds the logo in at least 0.9 of the validation B′ and in at
most 0.05 of the validation clean outputs B."""
METHOD = "null_embedding"
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
    ne_lrs: tuple = param((0.025, 0.05, 0.1, 0.2, 0.4), gt=0, le=10)
    """Candidate peak learning rates of null embedding (clean and watermarked models)."""
    ne_fractions: tuple = param((0.25, 1.0), gt=0, le=1)
    """Candidate stamp shares of null embedding, trained at fraction_lr."""
    fraction_lr: float = param(0.2, gt=0, le=10)
    """The peak lr the stamp-share candidates train at: the null-embedding chapter's (0.2, the lr
    rule's pick; the first published table was made at the chapter's earlier 0.1). Pinned, not
    read from the chapter, so that a re-run reproduces the published table."""
    ip_weights: tuple = param((3e3, 1e4, 3e4, 1e5, 3e5, 1e6), gt=0, le=1e9)
    """Candidate invisibility weights w_basic of the image study's stage 1 (the official code's 10⁴
    among them; 3·10³ and lr 0.4 were added when a first sweep picked the grids' edges)."""
    service_w_basic: float = param(1e4, gt=0, le=1e9)
    """w_basic of the service whose outputs the width candidates copy: the image chapter's (10⁴,
    the weight rule's pick; the first published table was made at the chapter's earlier 3·10⁵).
    Pinned for the same reason as fraction_lr."""
    ip_widths: tuple = param((8, 16), of=int, ge=1, le=256)
    """Candidate surrogate widths (the thief's choice), each with every architecture of ip_archs."""
    ip_archs: tuple = param(("resnet9", "resnet16"), choices=ip.SM_ARCHS)
    """Surrogate architectures the width, layout and norm are chosen on (the ones whose width, layout
    and norm were chosen on test)."""
    ip_layouts: tuple = param(ip.RESNET_LAYOUTS, choices=ip.RESNET_LAYOUTS)
    """Candidate ResNet layouts (part `layout`): pix2pix's (two stride-2 down-samplings) or full
    resolution, each with every norm of ip_norms, at the image chapter's sm_width."""
    ip_norms: tuple = param(ip.RESNET_NORMS, choices=ip.RESNET_NORMS)
    """Candidate ResNet norms (part `layout`): BatchNorm (the chapter's) or InstanceNorm (the
    official code's)."""
    suite_weights: tuple = param((1e4, 3e4, 1e5, 3e5), gt=0, le=1e9)
    """Candidate w_basic of the attack suite's image service, trained at the suite's budget
    (wm.suite.Config.budget("image-service") at this profile: its n_owner, m_epochs and stage1_epochs)."""
    thief_pairs: tuple = param((600, 1000, 1500, 2000, 3000), of=int, ge=16, le=MAX_PAIRS)
    """Candidate data budgets of the attack suite's thief (part `thief`): pairs it queries the
    service for, nested (each a prefix of the largest draw); 3000 is the image chapter's thief."""
    parts: tuple = param(PARTS, choices=PARTS)
    """Which candidates this run trains (a sweep may split a seed's run by part); `layout` needs
    ip_archs to be ResNets, the only surrogates with a layout and a norm."""
    ip_n_val: int = param(300, ge=1, le=10**5)
    """Validation pairs drawn from each held-out photo (the owner's and the thief's)."""
    ip_budget: str = ""
    """Overrides of the image recipe, "name=value,..."; empty: the image chapter's own."""
    suite_budget: str = ""
    """Overrides of the attack suite's budget for part `suite`, "name=value,..." (wm.suite.Config
    fields, e.g. "n_owner=32,stage1_epochs=1" for a test); empty: the suite's own at this profile."""
    ne_budget: str = ""
    """Overrides of the null-embedding recipe, "name=value,..." (e.g. "n_train=256,epochs=0.25"
    for a test); empty: the null-embedding chapter's own at this profile, which the tuned values
    are for."""

    SPLIT = ("parts", ("ne", "image"))
    """A sweep may split runs by `parts` (wm.results.load_merged); a run recorded before the
    parameter existed did the parts named here (its notebook had no other)."""

    PROFILE_DEFAULTS = {"smoke": dict(seeds=2, n_val=300, ne_lrs=(0.1, 0.2), ip_weights=(1e5, 3e5), ip_widths=(4, 8),
                                      ip_archs=("resnet9",), ip_n_val=24, suite_weights=(1e5, 3e5),
                                      thief_pairs=(32, 64)),
                        "cpu": dict(), "gpu": dict(ip_n_val=1000)}

    def ne(self) -> ne.Config:
        """The null-embedding chapter's Config at this profile: the recipe the candidates vary."""
        return ne.Config.from_profile(self.profile, seed=self.seed, **parse_budget(self.ne_budget, "ne_budget"))

    def ip(self) -> ip.Config:
        """The image chapter's Config at this profile: the recipe the image candidates vary."""
        return ip.Config.from_profile(self.profile, seed=self.seed, **parse_budget(self.ip_budget, "ip_budget"))

    def suite(self):
        """The attack suite's Config at this profile (wm.suite.Config): the budget part `suite` tunes for."""
        from wm import suite
        return suite.Config.from_profile(self.profile, **parse_budget(self.suite_budget, "suite_budget"))

    def validate(self) -> None:
        if isinstance(self.parts, str):  # one part as a sweep's grid gives it (--grid parts=ne,image,suite),
            self.parts = tuple(self.parts.split(","))  # or several as one text ("layout,thief")
        super().validate()

    def check(self) -> None:
        if "layout" in self.parts:
            require(all(a.startswith("resnet") for a in self.ip_archs), "ip_archs", self.ip_archs,
                    "ResNets only where part `layout` runs (no other surrogate has a layout or a norm)")
        try:
            self.suite()
        except ValueError as err:
            raise ValueError(f"suite_budget={self.suite_budget!r}: {err}") from None
        try:
            self.ip()
        except ValueError as err:
            raise ValueError(f"ip_budget={self.ip_budget!r}: {err}") from None
        try:
            base = self.ne()
        except ValueError as err:
            raise ValueError(f"ne_budget={self.ne_budget!r}: {err}") from None
        require(base.n_train - self.n_val >= base.batch_size, "n_val", self.n_val,
                f"at most the null-embedding n_train ({base.n_train}) less one batch ({base.batch_size})")


def run_seed(cfg: Config, s: int, results, device) -> dict[str, float]:
    """Every candidate of cfg.parts for seed S, recorded in RESULTS; returns seconds per part."""
    out = {}
    for part, run in (("ne", run_ne), ("image", run_image), ("suite", run_suite_image), ("layout", run_layout),
                      ("thief", run_thief)):
        if part in cfg.parts:
            out.update(run(cfg, s, results, device))
    return out


def run_ne(cfg: Config, s: int, results, device) -> dict[str, float]:
    """Null embedding's candidates for seed S."""
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
    for fraction in cfg.ne_fractions:
        measure(FRACTION, f"stamp_fraction={fraction:g} ({VALIDATION})", cfg.fraction_lr, fraction)
    lap("stamp share")
    return lap.seconds


NAMES = {"test_acc": "val acc", "wm_acc_null": "acc_null", "wm_acc_true": "acc_true"}


def tables(frame: pd.DataFrame) -> SimpleNamespace:
    """One row per (candidate, seed) of each tuned value, all measured on validation data: null
    embedding's clean and watermarked accuracy and verification (lr, stamp_fraction); the image
    study's B′ quality and R's success on marked and clean outputs (w_basic, and suite_w_basic at
    the suite's budget); the surrogates' copy of the service (sm_width, and sm_layout with columns
    layout and norm; one row per architecture too); the suite thief's copy and R's success on it
    per budget (n_attacker_pairs). A table whose part did not run is None."""
    frame = frame.assign(seed=frame.seed.astype(int))
    out = {}
    present = set(frame.experiment).__contains__  # a run of some parts has only their tables
    for name, experiment in (("lr", LR), ("stamp_fraction", FRACTION)):
        if not present(experiment):
            continue
        w = by_metric(frame, experiment, ("method", "seed", "case"), NAMES)
        w[name] = w.case.str.extract(rf"{name}=([0-9.e+-]+)")[0].astype(float)
        marked = w[w.method == METHOD].drop(columns=["method", "case"])
        clean = w[w.method == "none"][["seed", name, "val acc"]].rename(columns={"val acc": "clean val acc"})
        out[name] = marked.merge(clean, on=["seed", name]).sort_values([name, "seed"]).reset_index(drop=True)
    for name, experiment in (("w_basic", WEIGHT), ("suite_w_basic", SUITE_WEIGHT)):
        if not present(experiment):
            continue
        w = by_metric(frame, experiment, ("method", "seed", "case"))
        w["w_basic"] = w.case.str.extract(r"w_basic=([0-9.e+-]+)")[0].astype(float)
        marked = w[w.method == "deep"][["seed", "w_basic", "psnr", "ssim", "success_rate"]]
        clean = w[w.method == "none"][["seed", "w_basic", "success_rate"]].rename(columns={"success_rate": "fires on clean"})
        out[name] = marked.merge(clean, on=["seed", "w_basic"]).sort_values(["w_basic", "seed"]).reset_index(drop=True)
    if present(WIDTH):
        w = by_metric(frame, WIDTH, ("model", "seed", "case"))
        w["sm_width"] = w.case.str.extract(r"sm_width=([0-9]+)")[0].astype(int)
        out["sm_width"] = w[["model", "seed", "sm_width", "psnr", "ssim"]].sort_values(["sm_width", "model", "seed"]) \
            .reset_index(drop=True)
    if present(LAYOUT):
        w = by_metric(frame, LAYOUT, ("model", "seed", "case"))
        w[["layout", "norm"]] = w.case.str.extract(r"layout=(\w+), norm=(\w+)")
        out["sm_layout"] = w[["model", "seed", "layout", "norm", "psnr", "ssim"]] \
            .sort_values(["layout", "norm", "model", "seed"]).reset_index(drop=True)
    if present(THIEF):
        w = by_metric(frame, THIEF, ("model", "seed", "case"))
        w["n_attacker_pairs"] = w.case.str.extract(r"n_attacker_pairs=([0-9]+)")[0].astype(int)
        out["n_attacker_pairs"] = w[["seed", "n_attacker_pairs", "psnr", "ssim", "success_rate"]] \
            .sort_values(["n_attacker_pairs", "seed"]).reset_index(drop=True)
    return SimpleNamespace(**{name: out.get(name) for name in ("lr", "stamp_fraction", "w_basic", "sm_width",
                                                                "suite_w_basic", "sm_layout", "n_attacker_pairs")})


def summary(per_seed: pd.DataFrame, name: str) -> pd.DataFrame:
    """Mean and 95 % half-width over seeds of every column, per candidate value NAME."""
    rows = []
    for value, part in per_seed.groupby(name):
        row = {name: value, "seeds": len(part)}
        for col in ("clean val acc", "val acc", "acc_null", "acc_true", "verified"):
            row[col], row[f"{col} ±"] = interval(part[col])
        rows.append(row)
    return pd.DataFrame(rows).set_index(name)


def summary_of(per_seed: pd.DataFrame, name: str, col: str) -> pd.DataFrame:
    """Mean and 95 % half-width over seeds ("mean", "half") of COL per candidate value NAME."""
    return pd.DataFrame([dict(zip((name, "mean", "half"), (value, *interval(part[col]))))
                         for value, part in per_seed.groupby(name)]).set_index(name)


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


def choose_weight(per_seed: pd.DataFrame, bar: float = INVISIBLE_DB) -> float | None:
    """The rule for w_basic: the smallest weight (the strongest embedding: invisibility is a
    constraint, the mark's strength what is left to maximise) whose mean validation PSNR reaches
    BAR while R finds the logo in at least WORKS of the marked and at most SILENT of the clean
    validation outputs (means over seeds); None when no candidate qualifies."""
    m = per_seed.groupby("w_basic")[["psnr", "success_rate", "fires on clean"]].mean()
    ok = m[(m.psnr >= bar) & (m.success_rate >= WORKS) & (m["fires on clean"] <= SILENT)]
    return float(ok.index.min()) if len(ok) else None


def choose_width(per_seed: pd.DataFrame) -> int:
    """The thief's rule for the surrogate width: the width whose surrogates copy the service best on
    the thief's validation photo (mean PSNR against the service's outputs, over architectures and
    seeds); the logo plays no part in it."""
    return int(per_seed.groupby("sm_width").psnr.mean().idxmax())


def choose_layout(per_seed: pd.DataFrame) -> tuple[str, str]:
    """The thief's rule for the ResNets' layout and norm, as for the width: the (layout, norm)
    whose surrogates copy the service best (mean validation PSNR over architectures and seeds)."""
    return tuple(per_seed.groupby(["layout", "norm"]).psnr.mean().idxmax())


def choose_budget(per_seed: pd.DataFrame, db: float = THIEF_DB) -> int:
    """The thief's rule for its data budget: the fewest pairs (each one a paid query of the service)
    whose copy's mean validation PSNR is within DB of the best budget's; R's success plays no part."""
    means = per_seed.groupby("n_attacker_pairs").psnr.mean()
    return int(means[means >= means.max() - db].index.min())


def paired_gap(per_seed: pd.DataFrame, name: str, a: float, b: float, col: str = "val acc") -> tuple[float, float]:
    """Mean and 95 % half-width over seeds of COL at NAME=a minus at NAME=b, in points (paired by seed)."""
    w = per_seed.pivot(index="seed", columns=name, values=col)
    return tuple(100 * v for v in interval(w[a] - w[b]))
