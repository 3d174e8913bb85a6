"""One threat-model suite over every registered method: each applicable attack, one budget, one
strengths grid, several seeds.

The suite knows methods and attacks only through their registries (`wm.methods`, `wm.attacks`):
for each seed it groups the chosen methods by the unmarked twin they share
(`Method.twin_recipe`: the small CNN of WaterMAS's recipe for WaterMAS and its baselines, the null
embedding's own recipe, the deraining model M for the image services), trains that twin once,
lets each method mark its model, and then runs every planned (attack, strength) on each marked
model and, once, on the twin, which each method of the group scores with its own secret (the
negative control). Every row carries the method's `score` (its continuous detector statistic),
`verified` (its paper's decision rule) and its utility (`test_acc`, or `psnr` against the clean
ground truth for an image service), and the method's own details (BER, acc_null, success rate).

A method's plan (`plan`) is the registered attacks whose kinds include its kind, plus its own
attacks (piracy, overwrite), minus its documented `not_applicable` cells; every other cell of the
methods × attacks table has a reason (`reason`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from wm import attacks as attack_registry
from wm import methods as method_registry
from wm import nulls
from wm.config import (FASHION_TEST, FASHION_TRAIN, MAX_BATCH, MAX_EPOCHS, MAX_PAIRS, MAX_SEED, MAX_SEEDS, MAX_WIDTH,
                       StudyConfig, param, require)
from wm.methods import REGISTRY as METHODS_REGISTRY
from wm.methods import Method, Setup, Trained
from wm.methods._setups import classifier_setup, image_setup
from wm.metrics import ber_threshold
from wm.report import record, utility_metric

METHODS = tuple(method_registry.ordered())
"""Every registered method, as tables list them."""
ATTACKS = (*attack_registry.REGISTRY, *method_registry.own_attacks())
"""The registered attacks, then the methods' own (piracy, overwrite)."""

KEYS = 5000
"""Seed offset of the key population's random secrets (apart from the thief's, seed + 1000)."""
EQUAL_PSNR_DB = 1.0
"""An image mark is compared with its baseline only where both are equally visible: their marked
outputs' mean PSNR against the unmarked within this many dB (a more visible mark survives more for
that alone)."""

GRID_FIELDS = {"finetune": "finetune_epochs", "prune": "prune_amounts", "quantize": "quant_bits", "noise": "noise_k",
               "distill": "distill_epochs", "surrogate": "surrogate_epochs"}
"""The Config field that overrides a registered attack's default strengths (an attack without one
runs its registered grid)."""


def fmt(strength: Any) -> str:
    """A strength as the table writes it: numbers with `g` (0.1, 8, 40), words as they are."""
    return f"{strength:g}" if isinstance(strength, (int, float)) else str(strength)


def _grid(attack: str) -> tuple:
    return attack_registry.REGISTRY[attack].grid


@dataclass
class Config(StudyConfig):
    """Parameters of the attack-suite notebook."""

    profile: str = "cpu"
    """smoke, cpu or gpu (resolved from auto)."""
    seed: int = param(0, ge=0, le=MAX_SEED)
    """First seed: seeds seed, seed+1, … each build their own watermarked models, twins and attacks."""
    seeds: int = param(3, ge=1, le=MAX_SEEDS)
    """Seeds (independent repetitions of everything); headline numbers are means over them."""
    methods: tuple = param(METHODS, choices=METHODS)
    """Methods to run (registered names)."""
    attacks: tuple = param(ATTACKS, choices=ATTACKS)
    """Attacks to run; each runs against the methods whose plan holds it."""
    # --- the classifiers --------------------------------------------------------------------
    width: int = param(16, ge=1, le=MAX_WIDTH)
    """Width of the small CNN of every classifier method and twin."""
    n_train: int = param(12000, ge=1, le=FASHION_TRAIN)
    """Owner's training images (Fashion-MNIST) for every classifier."""
    n_attacker: int = param(3000, ge=1, le=FASHION_TRAIN)
    """Attacker's images, disjoint from the owner's: labelled for fine-tuning and piracy, unlabelled
    for distillation."""
    n_test: int = param(1000, ge=1, le=FASHION_TEST)
    """Held-out test images: test accuracy and the null embedding's verification."""
    epochs: float = param(4, gt=0, le=MAX_EPOCHS)
    """Training epochs of every classifier (each method keeps its own optimizer recipe)."""
    batch_size: int = param(128, ge=2, le=MAX_BATCH)
    """Samples per step of classifier training and attacks."""
    n_bits: int = param(256, ge=1, le=10**7)
    """Payload of WaterMAS, freeze-only and TART (keyed weights, one bit each)."""
    ber_fpr: float = param(1e-6, gt=0, lt=1)
    """The bit-reading methods verify when their BER is at most `ber_threshold(n_bits, ber_fpr)`: the
    BER that a model unrelated to the key (bits = fair coins) reaches with probability ≤ ber_fpr.
    1e-6 allows 89 wrong bits of 256 (BER ≤ 0.348) and 13 of 64. A fixed BER threshold such as 0.1
    would ignore the key length: too strict for long keys, too lax for short ones."""
    piracy_epochs: tuple = param((1, 2), gt=0, le=MAX_EPOCHS)
    """Piracy of the classifiers: epochs of the thief's own embedding on its data."""
    piracy_lr: float = param(0.01, gt=0, le=10)
    """Piracy: constant SGD learning rate of the thief's embedding."""
    # --- the image services -----------------------------------------------------------------
    size: int = param(32, ge=16, le=1024, multiple_of=8)
    """Side of the deraining patches (a multiple of 8)."""
    n_owner: int = param(1000, ge=16, le=MAX_PAIRS)
    """Owner's pairs (M, then H and R in stage 1)."""
    n_attacker_pairs: int = param(3000, ge=16, le=MAX_PAIRS)
    """Attacker's pairs, from other photos: rainy inputs with clean ground truth (white-box fine-tuning)
    and the service's outputs for them (surrogate). 3000, the image study's thief, as the thief's own
    rule chooses on a validation photo (wm.tuning, part `thief`: the fewest pairs whose copy is within
    0.25 dB of the best; the copy improved up to 3000, the largest candidate). History: the first
    `cpu` run gave its thief 600 pairs (the U-Net surrogate carried no logo on any of 3 seeds), probes
    on the test pairs (seed 0) at 1500 and 2000 gave 0.99, and 1500 was kept for runtime until the
    validated choice. The null populations do not depend on it: their independent models train on
    the owner's pairs only."""
    n_test_pairs: int = param(120, ge=1, le=MAX_PAIRS)
    """Test pairs: PSNR against the ground truth and the detectors."""
    m_epochs: float = param(6, gt=0, le=MAX_EPOCHS)
    """Epochs of M."""
    stage1_epochs: float = param(5, gt=0, le=MAX_EPOCHS)
    """Epochs of the deep watermark's stage 1 (H, R and the discriminator); also the thief's budget
    in the deep watermark's piracy row."""
    stage2: bool = False
    """Also run the deep watermark's stage 2 (R fine-tuned on the defender's own surrogate)."""
    stage2_epochs: float = param(6, gt=0, le=MAX_EPOCHS)
    """Epochs of stage 2, when it runs."""
    sr_threshold: float = param(0.5, gt=0, le=1)
    """The deep watermark verifies when R succeeds (centred NC ≥ τ) on at least this share of the
    test outputs: the owner can then show the logo in most outputs it queries."""
    overwrite_psnr: tuple = param((40.0, 35.0, 30.0), gt=0, le=200)
    """Overwrite of an image service: PSNR (dB) of the thief's spread-spectrum mark on each output."""
    ss_bits: int = param(64, ge=1, le=MAX_PAIRS)
    """Payload of the thief's spread-spectrum mark."""
    w_basic: float = param(3e4, gt=0, le=1e9)
    """Invisibility weight of the deep service's stage 1 (the image chapter's loss otherwise). Chosen
    for this budget on the owner's held-out photo by the tuning chapter's rule (part `suite` of
    book/tuning.ipynb: the smallest weight whose validation B′ reaches 35 dB with R working; 3·10⁴:
    37.1 dB, 3 seeds), not the image chapter's 10⁴, which leaves the mark visible at this smaller
    stage 1 (32.5 dB on validation, 31.7 on the suite's test patches)."""
    ss_psnr: float | None = param(None, gt=0, le=200)
    """PSNR of the spread-spectrum service's mark (its strength). None: the PSNR the deep service's
    mark measured on the same seed (its `invisibility` row), so that the two marks the suite compares
    are equally visible, as the image chapter compares them."""
    # --- the registered attacks' strengths (default: each attack's registered grid) -----------
    finetune_epochs: tuple = param(_grid("finetune"), gt=0, le=MAX_EPOCHS)
    """Fine-tuning: epochs over the attacker's data."""
    prune_amounts: tuple = param(_grid("prune"), ge=0, le=1)
    """Magnitude pruning: fraction of the weights zeroed."""
    quant_bits: tuple = param(_grid("quantize"), of=int, ge=1, le=32)
    """Min-max weight quantization: bits kept per weight."""
    noise_k: tuple = param(_grid("noise"), ge=0, le=1e6)
    """Gaussian weight noise: std = k × each layer's weight std."""
    distill_epochs: tuple = param(_grid("distill"), gt=0, le=MAX_EPOCHS)
    """Distillation of the classifiers: student epochs on the attacker's images."""
    surrogate_epochs: tuple = param(_grid("surrogate"), gt=0, le=MAX_EPOCHS)
    """Surrogate of an image service: epochs of the thief's U-Net (L2) on (A, service outputs)."""
    # --- null populations -------------------------------------------------------------------
    n_keys: int = param(1000, ge=1, le=10**6)
    """Wrong secrets (random keys, signatures or logos) each marked model is also read with, beside
    the owner's near misses (wm.nulls.key_population): with the attacked twins and the independent
    models of data/results/nulls.csv they set each method's threshold at FPR 1 % and 0.1 %."""
    # --- verdicts and timing -----------------------------------------------------------------
    useful_drop: float = param(0.02, gt=0, lt=1)
    """Verdicts: a classifier attack is 'cheap' when it costs at most this much test accuracy (2 points)."""
    useful_psnr_drop: float = param(1.0, gt=0, le=200)
    """Verdicts: an image-service attack is 'cheap' when it costs at most this many dB of PSNR."""
    merged: str = ""
    """A sweep of this suite over seeds (the merged table of `python -m wm sweep attack_suite --grid
    seed=... -p seeds 1`): the chapter shows its runs instead of training (wm.report.show_sweep; it recomputes the
    decision rows with the null populations published then)."""
    timings: bool = True
    """Record the wall-clock seconds of every training and attack as `seconds` rows. They differ from
    run to run, so the smoke profile (where CI compares two same-seed tables) leaves them out."""

    PROFILE_DEFAULTS = {
        "smoke": dict(seeds=1, width=8, n_train=1500, n_attacker=500, n_test=300, epochs=1, n_bits=64, size=16,
                      n_owner=96, n_attacker_pairs=64, n_test_pairs=24, m_epochs=1, stage1_epochs=1,
                      finetune_epochs=(0.5,), prune_amounts=(0.5, 0.9), quant_bits=(8, 2), noise_k=(0.1, 1.0),
                      distill_epochs=(0.5,), surrogate_epochs=(1,), piracy_epochs=(0.5,), overwrite_psnr=(35.0,),
                      n_keys=30, timings=False),
        # cpu: the three papers' methods at this budget took 8.1 min (3 seeds, Intel Xeon with AMX, 2
        # cores); the baselines add three small CNNs and their grids per seed
        "cpu": dict(),
        # not timed on a GPU yet: about four times the cpu profile's data and wider networks (the
        # image study's gpu widths), with stage 2
        "gpu": dict(width=32, n_train=50000, n_attacker=10000, n_test=10000, epochs=6, batch_size=256,
                    n_owner=3000, n_attacker_pairs=3000, n_test_pairs=500, m_epochs=10, stage1_epochs=12,
                    stage2=True, stage2_epochs=6, distill_epochs=(8,), surrogate_epochs=(10,)),
    }

    def check(self) -> None:
        for name in ("methods", "attacks"):
            require(len(set(getattr(self, name))) == len(getattr(self, name)), name, getattr(self, name), "distinct values")
        require(self.n_train + self.n_attacker <= FASHION_TRAIN, "n_attacker", self.n_attacker,
                f"at most {FASHION_TRAIN} - n_train ({self.n_train}): the owner's and the attacker's images are disjoint")
        for name in ("n_train", "n_attacker"):
            require(getattr(self, name) >= self.batch_size, name, getattr(self, name), f"at least batch_size ({self.batch_size})")
        require(ber_threshold(self.n_bits, self.ber_fpr) >= 0, "ber_fpr", self.ber_fpr,
                f"reachable with n_bits = {self.n_bits} (even a perfect read is more likely by chance)")
        require(self.ss_bits <= self.size ** 2, "ss_bits", self.ss_bits, f"an integer in 1..size² ({self.size ** 2})")
        for name in self.methods:  # a baseline matched to its paper method's cost needs that method
            m = METHODS_REGISTRY[name]
            if m.matched_cost and getattr(self, m.matched_cost[0]) is None:
                require(m.baseline_of in self.methods, m.matched_cost[0], None,
                        f"a value where the suite runs {name} without {m.baseline_of} (None: {m.baseline_of}'s measured "
                        f"{m.matched_cost[1]})")

    # --- what the methods share: one budget per kind ------------------------------------------

    def budget(self, kind: str) -> dict[str, Any]:
        """The keyword arguments of the kind's Setup (wm.methods._setups) at this suite's budget."""
        if kind == "image-service":
            return dict(size=self.size, n_owner=self.n_owner, n_attacker=self.n_attacker_pairs,
                        n_test=self.n_test_pairs, m_epochs=self.m_epochs, stage1_epochs=self.stage1_epochs,
                        stage2=self.stage2, stage2_epochs=self.stage2_epochs, sr_threshold=self.sr_threshold,
                        ber_fpr=self.ber_fpr, overwrite_psnr=self.overwrite_psnr, ss_bits=self.ss_bits,
                        w_basic=self.w_basic, ss_psnr=self.ss_psnr)
        return dict(n_train=self.n_train, n_attacker=self.n_attacker, n_test=self.n_test, width=self.width,
                    epochs=self.epochs, batch_size=self.batch_size, n_bits=self.n_bits, ber_fpr=self.ber_fpr,
                    piracy_epochs=self.piracy_epochs, piracy_lr=self.piracy_lr)

    def grid(self, method: str, attack: str) -> list:
        """The strengths of ATTACK against METHOD, weakest first (empty where the plan has no such
        cell, or the attack is not chosen)."""
        m = _method(method)
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}: choose from {', '.join(ATTACKS)}")
        if attack not in plan(m) or attack not in self.attacks:
            return []
        if attack in m.own_attacks:
            budget = {**self.budget(m.kind), "profile": self.profile}
            return list(m.own_grid(attack, Setup(self.seed, torch.device("cpu"), budget)))
        field = GRID_FIELDS.get(attack)
        return list(getattr(self, field) if field else _grid(attack))


def _method(name: str) -> Method:
    if name not in METHODS_REGISTRY:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    return METHODS_REGISTRY[name]


# ---------------------------------------------------------------------------------------------
# The plan: which attack runs against which method, and why a cell is empty
# ---------------------------------------------------------------------------------------------


def plan(method: Method) -> list[str]:
    """METHOD's attacks: the registered ones of its kind, then its own, minus its not-applicable."""
    names = [a.name for a in attack_registry.for_kind(method.kind)] + list(method.own_attacks)
    return [a for a in names if a not in method.not_applicable]


def reason(method: Method, attack: str) -> str:
    """Why ATTACK is not in METHOD's plan."""
    if attack in method.not_applicable:
        return method.not_applicable[attack]
    if attack in attack_registry.REGISTRY:
        kinds = ", ".join(attack_registry.REGISTRY[attack].kinds)
        return f"applies to {kinds} methods; {method.label} is {method.kind}"
    owners = [m.label for m in METHODS_REGISTRY.values() if attack in m.own_attacks]
    return f"an attack of its own of {', '.join(owners)}; {method.label} has none of that name"


# ---------------------------------------------------------------------------------------------
# Data: one Setup per kind, shared by every seed
# ---------------------------------------------------------------------------------------------


def setups(cfg: Config, device) -> dict[str, Setup]:
    """The data of every kind the chosen methods need, drawn with cfg.seed (the two classifier
    kinds share Fashion-MNIST; `run_seed` draws again for each other seed). A missing or corrupt
    data set fails here, before any training."""
    kinds = {METHODS_REGISTRY[m].kind for m in cfg.methods}
    out: dict[str, Setup] = {}
    if kinds & {"classifier-white", "classifier-black"}:
        s = classifier_setup(cfg.profile, cfg.seed, device, **cfg.budget("classifier-white"))
        out.update({"classifier-white": s, "classifier-black": s})
    if "image-service" in kinds:
        out["image-service"] = image_setup(cfg.profile, cfg.seed, device, **cfg.budget("image-service"))
    return out


def groups(cfg: Config) -> dict[str, list[Method]]:
    """The chosen methods by the twin they share, in table order."""
    out: dict[str, list[Method]] = {}
    for name in method_registry.ordered(cfg.methods):
        m = METHODS_REGISTRY[name]
        out.setdefault(m.twin_recipe, []).append(m)
    return out


# ---------------------------------------------------------------------------------------------
# One seed: train, attack, record
# ---------------------------------------------------------------------------------------------

Attacked = Iterator[tuple[str, str, Any, "dict | None", float]]
"""(attack, strength, attacked model or outputs, the thief's claim or None, seconds the attack took)."""


def attacked_versions(cfg: Config, method: Method, suspect: Any, trained: Trained | None, setup: Setup,
                      only: Callable[[str], bool] = lambda attack: True) -> Attacked:
    """Every planned attack of METHOD on SUSPECT (its marked model or its twin), at every strength
    of the grid; ONLY filters by attack name."""
    for attack in plan(method):
        if not only(attack):
            continue
        for strength in cfg.grid(method.name, attack):
            t = time.perf_counter()
            if attack in method.own_attacks:
                out, claim = method.attack(attack, strength, suspect, trained, setup)
            else:
                out, claim = attack_registry.REGISTRY[attack].run(suspect, strength, setup, method.kind), None
            yield attack, fmt(strength), out, claim, time.perf_counter() - t


def axis_label(attack: str) -> str:
    """What ATTACK's strength measures (a registered attack's axis, or its owners' own)."""
    if attack in attack_registry.REGISTRY:
        return attack_registry.REGISTRY[attack].axis
    return next(m.own_attacks[attack] for m in METHODS_REGISTRY.values() if attack in m.own_attacks)


def control_model(method: Method) -> str:
    """The `model` column of METHOD's control rows (method `none`)."""
    return f"{method.twin_model}:control_{method.name}"


def run_seed(cfg: Config, kinds: dict[str, Setup], seed: int, results) -> dict[str, float]:
    """Train every chosen method and its twin for SEED, run the grid through each and its twin,
    and record one row per metric in RESULTS (a wm.results.Results). Returns seconds per phase."""
    phases: dict[str, float] = {}
    secs = (lambda s: {"seconds": s}) if cfg.timings else (lambda s: {})

    def add(method: str, model: str, attack: str, strength, metrics: dict, experiment: str = "suite") -> None:
        record(results, method, model, experiment, metrics, seed=seed, attack=attack, strength=strength)

    def measure(m: Method, suspect, secret, setup) -> dict[str, float]:
        return {utility_metric(m): m.utility(suspect, setup), **m.detect(suspect, secret, setup)}

    if any(k.seed != seed for k in kinds.values()):
        # each seed draws its own data, as a one-seed run of a sweep does (`setups` with seed=SEED):
        # a run over several seeds then gives every seed the rows its one-seed run gives
        kinds = setups(dataclasses.replace(cfg, seed=seed), next(iter(kinds.values())).device)
    for recipe, group in groups(cfg).items():
        setup = kinds[group[0].kind]
        group_start = t = time.perf_counter()
        twin = group[0].train_twin(setup)
        twin_seconds = time.perf_counter() - t
        trained: dict[str, Trained] = {}
        for m in group:
            t = time.perf_counter()
            trained[m.name] = m.train(setup, twin)
            spent = time.perf_counter() - t
            tr = trained[m.name]
            add(m.name, m.model, "none", None, {**measure(m, tr.marked, tr.secret, setup), **secs(spent)})
            add("none", control_model(m), "none", None, {**measure(m, twin, tr.secret, setup), **secs(twin_seconds)})
            if fid := m.fidelity(tr, setup):
                add(m.name, m.model, "none", None, fid, experiment="invisibility")
                for b in group:  # its matched baselines (trained next: baselines follow) mark at the cost it measured
                    if b.baseline_of == m.name and b.matched_cost and setup.budget.get(b.matched_cost[0], 0) is None:
                        key, metric = b.matched_cost
                        setup = dataclasses.replace(setup, budget={**setup.budget, key: fid[metric]})
            t = time.perf_counter()
            for r in nulls.key_population(m, tr, setup, cfg.n_keys, seed=KEYS + seed).itertuples():
                record(results, m.name, m.model, nulls.NULL_KEYS, {"score": r.score, "verified": r.verified},
                       seed=seed, case=f"{r.case} #{r.index}")
            phases[f"key population {m.name}"] = time.perf_counter() - t
        phases[f"train {recipe}"] = time.perf_counter() - group_start  # the twin and every marked model

        t = time.perf_counter()
        for m in group:  # the grid against each marked model
            tr = trained[m.name]
            for attack, strength, out, claim, spent in attacked_versions(cfg, m, tr.marked, tr, setup):
                add(m.name, m.model, attack, strength, {**measure(m, out, tr.secret, setup), **secs(spent)})
                if claim is not None:  # the thief's own watermark, where it adds one
                    add(m.name, m.model, attack, strength, claim, experiment="suite_thief_claim")
        phases[f"attack {recipe}"] = time.perf_counter() - t

        # the controls: a registered attack ignores the watermark, so it runs once on the shared twin
        # and every method of the group reads the same attacked model; own attacks use the secret
        t = time.perf_counter()
        for attack in ATTACKS:
            readers = [m for m in group if attack in plan(m) and attack not in m.own_attacks]
            if not readers:
                continue
            for attack_, strength, out, _, spent in attacked_versions(cfg, readers[0], twin, None, setup,
                                                                      only=attack.__eq__):
                for m in readers:
                    if strength in map(fmt, cfg.grid(m.name, attack)):
                        add("none", control_model(m), attack, strength,
                            {**measure(m, out, trained[m.name].secret, setup), **secs(spent)})
        for m in group:
            tr = trained[m.name]
            for attack, strength, out, _, spent in attacked_versions(cfg, m, twin, tr, setup,
                                                                     only=m.own_attacks.__contains__):
                add("none", control_model(m), attack, strength, {**measure(m, out, tr.secret, setup), **secs(spent)})
        phases[f"attack controls {recipe}"] = time.perf_counter() - t
    return phases
