"""Null populations: scores the owner's detector gives to what is not the owner's (issue 17), and
the decisions at a stated false-positive rate they support.

DESIGN.md names three populations:

* wrong and near-miss secrets on the marked model (`key_population`: N random keys, signatures or
  logos, and near misses of the owner's: a few bits flipped, positions or patterns shifted), from
  `Method.null_secrets`; the attack suite records them for every marked model and seed;
* independently trained unmarked models (`independent_models`): other seeds, and a second
  architecture (`Method.null_archs`), on the owner's data with the twin's recipe, scored with the
  owner's secret of every suite seed. They are the expensive population: the build is its own
  notebook (notebooks/nulls.ipynb, not a chapter), run as a sweep over member chunks
  (`python -m wm sweep nulls --grid first_member=...`) and published to data/results/nulls.csv,
  which the suite reads;
* attacked unmarked twins: the attack suite's control rows.

`decisions` turns them into one threshold per method and seed at each target FPR (pooled over the
three populations: the owner does not know which kind of suspect it faces) and reports for every
(attack, strength) whether the attacked marked model is detected, the empirical FPR at that
threshold and its Clopper–Pearson bound, and the ROC AUC, per seed; the chapters take means and
intervals over seeds.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from wm.config import MAX_SEED, MAX_SEEDS, StudyConfig, param
from wm.methods import REGISTRY, Method, Setup, Trained
from wm.methods._setups import outputs

FPRS = (0.01, 0.001)
"""The target false-positive rates the book reports."""
NULL_KEYS, NULL_MODELS, DECISION = "null_keys", "null_models", "decision"
"""Experiments of the tables: the key population (suite), the model population (nulls), decisions."""
FIRST_MEMBER = 200
"""Seeds of independent models start here: apart from the suite's seeds (0, 1, 2 ...) and their
offsets below 200 (the defender's surrogate is seed + 99)."""


def key_population(method: Method, trained: Trained, setup: Setup, n: int, seed: int) -> pd.DataFrame:
    """The marked model scored with N random secrets and the owner's near misses (seeded by SEED):
    one row per secret (case, index, score, verified)."""
    if n < 1:
        raise ValueError(f"n={n}: a key population needs at least one random key")
    suspect = trained.marked
    if method.kind == "image-service":  # the service's outputs once; each secret reads the same images
        suspect = outputs(suspect, setup)
    pairs = method.null_secrets(trained, setup, n, seed)
    found = method.detect_many(suspect, [s for _, s in pairs], setup)
    return pd.DataFrame([{"case": case, "index": i, "score": d["score"], "verified": d["verified"]}
                         for i, ((case, _), d) in enumerate(zip(pairs, found))])


def recipes() -> list[str]:
    """The twin recipes of the registered methods (one group of independent models each)."""
    return list(dict.fromkeys(REGISTRY[m].twin_recipe for m in REGISTRY))


@dataclass
class Config(StudyConfig):
    """Parameters of the null-population build (notebooks/nulls.ipynb). Sizes, data and epochs are
    the attack suite's at the same profile (wm.suite.Config): the null models must be trained as
    the twins they stand beside."""

    profile: str = "cpu"
    """smoke, cpu or gpu (resolved from auto)."""
    recipes: tuple = param(tuple(recipes()), choices=tuple(recipes()))
    """Twin recipes to build (each method scores the models of its own recipe)."""
    first_member: int = param(FIRST_MEMBER, ge=FIRST_MEMBER, le=MAX_SEED)
    """Seed of the first independent model; a sweep gives each chunk its own range."""
    members: int = param(20, ge=1, le=10**4)
    """Independent models per architecture (seeds first_member, first_member + 1, ...)."""
    seed: int = param(0, ge=0, le=MAX_SEED)
    """First owner seed: the suite's seeds seed, seed + 1, ... whose secrets score the models."""
    seeds: int = param(3, ge=1, le=MAX_SEEDS)
    """Owner seeds (the suite's)."""
    merged: str = ""
    """A sweep's merged table (data/sweeps/nulls-<profile>/nulls.csv) to show instead of building."""
    budget: str = ""
    """Overrides of the suite's budget at this profile, as `name=value,name=value` (e.g.
    "n_train=256,epochs=0.5"): the models must be trained as the twins of the suite they serve,
    which the suite checks before using them (`published_models`). Empty: the profile's."""

    PROFILE_DEFAULTS = {"smoke": dict(members=2, seeds=1), "cpu": dict(), "gpu": dict(members=50)}

    def validate(self) -> None:
        if isinstance(self.recipes, str):  # one recipe, as a sweep's grid gives it (-p recipes smallcnn)
            self.recipes = (self.recipes,)
        super().validate()

    def check(self) -> None:
        from wm.config import require
        require(self.first_member > self.seed + self.seeds + 99, "first_member", self.first_member,
                "above the owner seeds and their offsets (seed + seeds + 99)")
        try:
            suite_config(self)
        except ValueError as err:
            raise ValueError(f"budget={self.budget!r}: {err}") from None

    def overrides(self) -> dict:
        """`budget` as the suite Config's keyword arguments."""
        from wm.config import parse_budget
        return parse_budget(self.budget, "budget")


def suite_config(cfg: Config):
    """The attack suite's Config these populations stand beside (its profile defaults)."""
    from wm import suite
    return suite.Config.from_profile(cfg.profile, seed=cfg.seed, seeds=cfg.seeds, **cfg.overrides())


def independent_models(cfg: Config, device, results, log=print) -> dict[str, float]:
    """Train cfg.members unmarked models per architecture and recipe, score each with every
    method's owner secret for every owner seed, and record the rows (method, model = architecture,
    experiment `null_models`, case = 'independent model <its seed>', seed = the owner seed). Also records
    each model's utility (method `none`, seed = its own seed). Returns seconds per recipe."""
    from wm import suite
    from wm.report import record, utility_metric

    scfg = suite_config(cfg)
    kinds = suite.setups(dataclasses.replace(scfg, methods=tuple(m for m in suite.METHODS
                                                                  if REGISTRY[m].twin_recipe in cfg.recipes)), device)
    owner_seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    phases = {}
    for recipe in cfg.recipes:
        group = [REGISTRY[m] for m in suite.METHODS if REGISTRY[m].twin_recipe == recipe]
        base = kinds[group[0].kind]
        t = time.perf_counter()
        secrets = {(m.name, s): m.owner_secret(dataclasses.replace(base, seed=s)) for m in group for s in owner_seeds}
        for member in range(cfg.first_member, cfg.first_member + cfg.members):
            for arch in group[0].null_archs:
                setup = dataclasses.replace(base, seed=member, budget={**base.budget, "arch": arch})
                model = group[0].train_twin(setup)
                record(results, "none", arch, NULL_MODELS, {utility_metric(group[0]): group[0].utility(model, setup)},
                       seed=member, case=f"independent model of {recipe}")
                for m in group:
                    for s in owner_seeds:
                        d = m.detect(model, secrets[m.name, s], dataclasses.replace(base, seed=s))
                        # an unattacked row has no strength: the member's seed goes in `case`
                        record(results, m.name, arch, NULL_MODELS, {"score": d["score"], "verified": d["verified"]},
                               seed=s, case=f"independent model {member}")
            log(f"{recipe}: independent model {member} ({len(group[0].null_archs)} architectures) scored")
        phases[recipe] = time.perf_counter() - t
    return phases


# ---------------------------------------------------------------------------------------------
# Decisions at a stated false-positive rate
# ---------------------------------------------------------------------------------------------


def null_scores(table: pd.DataFrame, method: str, seed: int, models: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """METHOD's null populations for owner SEED, by name: the random and the near-miss secrets on
    the marked model, the attacked unmarked twins (from the suite's TABLE), and the independent
    models (from MODELS, the nulls table, where given and holding this method)."""
    from wm.suite import control_model

    score = table[(table.metric == "score") & (table.seed == seed)]
    keys = score[(score.method == method) & (score.experiment == NULL_KEYS)]
    near = keys.case.str.startswith("near-miss")
    out = {"random secrets": keys[~near].value, NEAR_MISS: keys[near].value,
           "unmarked twin, attacked or not": score[(score.method == "none") & (score.experiment == "suite")
                                                   & (score.model == control_model(REGISTRY[method]))].value}
    if models is not None:
        m = models[(models.metric == "score") & (models.seed == seed) & (models.method == method)
                   & (models.experiment == NULL_MODELS)]
        out["independent models"] = m.value
    return {k: np.asarray(v, dtype=float) for k, v in out.items() if len(v)}


NEAR_MISS = "near-miss secrets"
"""Not pooled into the threshold: a key a few bits off the owner's reads the marked model almost
as well as the owner's by construction (every bit-reading detector does), so it measures how
specific the secret is, not whether an unrelated party's claim passes. Its FPR at the threshold is
reported beside the others."""


def decisions(table: pd.DataFrame, models: pd.DataFrame | None = None, fprs=FPRS) -> pd.DataFrame:
    """For every method and seed of the suite's TABLE: one threshold per target FPR, set on the
    pooled null populations of unrelated claims (`null_scores` but the near misses); then for each (attack, strength) of the marked model
    whether it is detected (`tpr_at_fpr`: 1 or 0 for this seed; its mean over seeds is the TPR)
    and the ROC AUC of that one marked score against the pool; and per population the empirical
    FPR at the threshold with its Clopper–Pearson upper bound. Rows in the results table's columns
    (experiment `decision`; the FPR level and population in `case`)."""
    from wm.metrics import fpr_upper, roc_auc, threshold_at_fpr

    rows = []

    def add(method, attack, strength, seed, metric, value, case):
        rows.append(dict(method=method, model=REGISTRY[method].model, experiment=DECISION, attack=attack,
                         strength=strength, seed=seed, metric=metric, value=float(value), case=case))

    marked = table[(table.experiment == "suite") & (table.metric == "score") & (table.method != "none")]
    for (method, seed), own in marked.groupby(["method", "seed"], sort=False):
        pops = null_scores(table, method, seed, models)
        if not pops:
            continue
        pool = np.concatenate([z for name, z in pops.items() if name != NEAR_MISS])
        for level in fprs:
            t = threshold_at_fpr(pool, level)
            add(method, "none", "", seed, "threshold", t, f"fpr={level:g}")
            for name, z in {"pooled": pool, **pops}.items():
                fp = int((z > t).sum())
                add(method, "none", "", seed, "fpr", fp / len(z), f"fpr={level:g}: {name} (n={len(z)})")
                add(method, "none", "", seed, "fpr_upper", fpr_upper(fp, len(z)), f"fpr={level:g}: {name} (n={len(z)})")
            for r in own.itertuples():
                add(method, r.attack, r.strength, seed, "tpr_at_fpr", float(r.value > t), f"fpr={level:g}")
        for r in own.itertuples():
            add(method, r.attack, r.strength, seed, "auc", roc_auc([r.value], pool), "auc")
    return pd.DataFrame(rows)


def published_models(scfg) -> tuple[pd.DataFrame | None, str]:
    """The published independent-model population (data/results/nulls.csv) where it stands beside
    the suite configured by SCFG (a wm.suite.Config): the same profile, the profile's default
    budget (the population was trained with it) and every seed of the suite scored. Returns the
    rows (or None) and a sentence saying which, for the chapter."""
    from wm import results as res

    path = res.PUBLISHED_RESULTS / "nulls.csv"
    if not path.is_file():
        return None, "no independent-model population is published (data/results/nulls.csv)"
    table = res.load("nulls", res.PUBLISHED_RESULTS)
    sidecar = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}
    built = sidecar.get("parameters", {}).get("budget", "")
    try:
        default = suite_config(Config(profile=scfg.profile, budget=built))
    except ValueError as err:
        return None, f"the published independent models' budget is unreadable here ({err})"
    if set(table.profile) != {scfg.profile}:
        return None, f"the published independent models are of profile {', '.join(sorted(set(table.profile)))}, not {scfg.profile}"
    changed = [k for kind in ("classifier-white", "image-service")
               for k, v in scfg.budget(kind).items() if default.budget(kind)[k] != v]
    if changed:
        return None, f"this suite's budget differs from the one the published independent models were trained " \
                     f"with ({', '.join(sorted(set(changed)))})"
    models = table[table.experiment == NULL_MODELS]
    seeds = set(range(scfg.seed, scfg.seed + scfg.seeds))
    scored = set(models[models.method != "none"].seed)
    if not seeds <= scored:
        return None, f"the published independent models are scored for owner seeds {sorted(scored)}, not {sorted(seeds)}"
    methods = sorted(set(models.method) - {"none"})
    n = models[(models.method != "none") & (models.metric == "score")].groupby("method").size()
    return models, ("independent models from data/results/nulls.csv: " +
                    ", ".join(f"{REGISTRY[m].label} {n[m] // len(scored)} per seed" for m in methods))
