"""One threat-model suite across the three methods: every attack, one budget, one strengths grid.

Each seed builds the three watermarked models with the studies' own code, at one reduced common
budget: a small CNN with the null embedding (`wm.null_embedding`), a small CNN with WaterMAS
(`wm.watermas`), and Zhang et al.'s deraining service M∘H (`wm.image_processing`). Each is then
attacked on the same strengths grid, and so is an unwatermarked twin (the negative control): a
clean small CNN, checked with the owner's signature and with the owner's key, and the clean M
without H, checked with R. Every row says whether the owner's watermark survives (`verified`, one
uniform 0/1 column for the three methods) and what the attacked model is still worth (test
accuracy for the classifiers, PSNR against the clean ground truth for the image service).

The survival rules (all in Config):

* null embedding: the paper's verification, acc_null and acc_true ≥ T on held-out images;
* WaterMAS: BER ≤ the binomial bound of `ber_threshold` (an unrelated model passes with
  probability ≤ `ber_fpr`);
* deep: R's success rate (share of outputs whose centred NC with δ reaches τ) ≥ `sr_threshold`.

What each attack is, per method (`PLAN`; `NOT_RUN` says why a cell is empty):

* `finetune`: EPOCHS on the attacker's labelled data at a fixed learning rate. For the image
  service the white-box thief fine-tunes the whole of M∘H (δ fixed) on clean pairs with L1.
* `prune`, `quantize`, `noise`: `wm.attacks` on every convolution and linear weight; for the
  image service on M's and H's weights together (white box: the thief holds M∘H).
* `distill` (classifiers): a fresh student of the same architecture on the teacher's soft labels
  for the attacker's unlabelled images. `surrogate` (image service): a U-Net trained on the
  service's outputs for the attacker's inputs, the paper's black-box attack.
* `piracy`: the thief adds a watermark of its own. Null embedding: `null_embedding.pirate` with a
  second party's signature. WaterMAS: a second WaterMAS embedding under the thief's own key
  (written into the stolen weights, then fine-tuned with the sharpness hook). Image service: the
  thief trains a deep watermark of its own (its H′ and R′, with the image study's recipe and the
  owner's stage-1 budget, its own QR-like δ′) on the service's outputs for its inputs, and resells
  H′(service output): the owner's R must still find the owner's logo under the thief's.
* `overwrite`: WaterMAS's key-aware attack (`watermas.overwrite`: the keyed weights negated,
  zeroed or redrawn; what the WaterMAS chapter calls overwriting). Image service: the thief stamps
  its own additive spread-spectrum mark on every output at a given PSNR (what a thief without
  the owner's H can cheaply do to claim the outputs as its own).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from wm import attacks, data
from wm import image_processing as ip
from wm import null_embedding as ne
from wm import watermas as wmas
from wm.config import (FASHION_TEST, FASHION_TRAIN, MAX_BATCH, MAX_EPOCHS, MAX_PAIRS, MAX_SEED, MAX_SEEDS, MAX_WIDTH,
                       StudyConfig, param, require)
from wm.metrics import ber_threshold
from wm.train import TrainConfig, evaluate, fit, seed_everything

METHODS = ("null_embedding", "watermas", "deep")
"""The three watermarks, as the results table's `method` column names them."""
ATTACKS = ("finetune", "prune", "quantize", "noise", "distill", "surrogate", "overwrite", "piracy")
"""The suite's attacks (a subset of wm.results.ATTACKS)."""

PLAN = {
    "null_embedding": ("finetune", "prune", "quantize", "noise", "distill", "piracy"),
    "watermas": ("finetune", "prune", "quantize", "noise", "distill", "overwrite", "piracy"),
    "deep": ("finetune", "prune", "quantize", "noise", "surrogate", "overwrite", "piracy"),
}
"""Which attack runs against which method."""

NOT_RUN = {
    ("null_embedding", "surrogate"): "the image-to-image surrogate; its classifier counterpart is `distill`",
    ("watermas", "surrogate"): "the image-to-image surrogate; its classifier counterpart is `distill`",
    ("deep", "distill"): "soft-label distillation needs class probabilities; the image service's "
                         "black-box counterpart is `surrogate`",
    ("null_embedding", "overwrite"): "the null embedding has no keyed weights or outputs to overwrite; "
                                     "adding a second watermark is its `piracy` row",
}
"""(method, attack) cells of the suite that are deliberately empty, and why."""

MODEL = {"null_embedding": "smallcnn", "watermas": "smallcnn", "deep": "unet_h"}
"""The `model` column of a watermarked model's rows: the attacked artefact (unet_h = M∘H)."""
CONTROL_MODEL = {"null_embedding": "smallcnn:control_null_embedding", "watermas": "smallcnn:control_watermas",
                 "deep": "unet:control_deep"}
"""The `model` column of the negative controls (method `none`): what each one controls for."""

# Offsets that give each seeded purpose of one seed its own stream.
_DISTILL, _SURROGATE, _PIRATE, _OVERWRITE = 11, 100, 1000, 7


def fmt(strength: Any) -> str:
    """A strength as the table writes it: numbers with `g` (0.1, 8, 40), words as they are."""
    return f"{strength:g}" if isinstance(strength, (int, float)) else str(strength)


@dataclass
class Config(StudyConfig):
    """Parameters of the attack-suite notebook."""

    profile: str = "cpu"
    """smoke, cpu or gpu (resolved from auto)."""
    seed: int = param(0, ge=0, le=MAX_SEED)
    """First seed: seeds seed, seed+1, … each build their own three watermarked models, controls and attacks."""
    seeds: int = param(3, ge=1, le=MAX_SEEDS)
    """Seeds (independent repetitions of everything); headline numbers are means over them."""
    methods: tuple = param(METHODS, choices=METHODS)
    """Methods to run (a subset of METHODS)."""
    attacks: tuple = param(ATTACKS, choices=ATTACKS)
    """Attacks to run (a subset of ATTACKS); each runs against the methods PLAN pairs it with."""
    # --- the classifiers (null embedding, WaterMAS, their clean control) -----------------------
    width: int = param(16, ge=1, le=MAX_WIDTH)
    """Width of the small CNN (both classifier methods and their control)."""
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
    """WaterMAS payload (keyed weights, one bit each)."""
    ber_fpr: float = param(1e-6, gt=0, lt=1)
    """WaterMAS survives when its BER is at most `ber_threshold(n_bits, ber_fpr)`: the BER that a model
    unrelated to the key (bits = fair coins) reaches with probability ≤ ber_fpr. A claim of
    ownership must be hard to make against an innocent model; 1e-6 allows 89 wrong bits of 256
    (BER ≤ 0.348) and 13 of 64. A fixed BER threshold such as 0.1 would ignore the key length: too
    strict for long keys, too lax for short ones."""
    # --- the image service (Zhang et al.) ---------------------------------------------------
    size: int = param(32, ge=16, le=1024, multiple_of=8)
    """Side of the deraining patches (a multiple of 8)."""
    n_owner: int = param(1000, ge=16, le=MAX_PAIRS)
    """Owner's pairs (M, then H and R in stage 1)."""
    n_attacker_pairs: int = param(1500, ge=16, le=MAX_PAIRS)
    """Attacker's pairs, from other photos: rainy inputs with clean ground truth (white-box fine-tuning)
    and the service's outputs for them (surrogate). 1500, half the image study's thief: with 600 (the
    first cpu run) the U-Net surrogate's outputs lay 1.7 dB below the service's PSNR and carried no
    logo on any of 3 seeds (success rate 0.00); probes (seed 0) at 1500 and 2000 gave 0.99, so a
    thief's data budget decides this row, and the suite gives its thief the larger one. (2000 pairs,
    with the piracy row, took 15.2 min for the cpu notebook: over its 15-minute budget.)"""
    n_test_pairs: int = param(120, ge=1, le=MAX_PAIRS)
    """Test pairs: PSNR against the ground truth and R's success rate."""
    m_epochs: float = param(6, gt=0, le=MAX_EPOCHS)
    """Epochs of M."""
    stage1_epochs: float = param(5, gt=0, le=MAX_EPOCHS)
    """Epochs of stage 1 (H, R and the discriminator). 5, not the 6 of the first timing: the whole
    cpu notebook measured 14 min 44 s with 6, too close to its 15-minute budget."""
    stage2: bool = False
    """Also run stage 2 (R fine-tuned on the defender's own surrogate): the image study's full
    recipe, at the cost of a defender surrogate and a stage-2 training per seed."""
    stage2_epochs: float = param(6, gt=0, le=MAX_EPOCHS)
    """Epochs of stage 2, when it runs."""
    sr_threshold: float = param(0.5, gt=0, le=1)
    """The deep watermark survives when R succeeds (centred NC ≥ τ) on at least this share of the
    test outputs: the owner can then show the logo in most outputs it queries, while clean outputs
    and photos give a success rate of about 0 (the image study's controls)."""
    # --- the one strengths grid -------------------------------------------------------------
    finetune_epochs: tuple = param((1, 2), gt=0, le=MAX_EPOCHS)
    """Fine-tuning attack: epochs over the attacker's data."""
    finetune_lr: float = param(0.01, gt=0, le=10)
    """Classifier fine-tuning: constant SGD learning rate (momentum 0.9, weight decay 5e-4)."""
    finetune_lr_i2i: float = param(1e-4, gt=0, le=10)
    """Image-service fine-tuning: constant Adam learning rate (a tenth of the rate M was trained with)."""
    prune_amounts: tuple = param((0.1, 0.3, 0.5, 0.7, 0.9), ge=0, le=1)
    """Magnitude pruning: fraction of the weights zeroed."""
    prune_scope: str = param("global", choices=("global", "layer"))
    """`global` (the smallest weights of all layers together) or `layer` (of each layer), for every method."""
    quant_bits: tuple = param((8, 6, 4, 3, 2), of=int, ge=1, le=32)
    """Min-max weight quantization: bits kept per weight."""
    noise_k: tuple = param((0.1, 0.25, 0.5, 1.0, 2.0), ge=0, le=1e6)
    """Gaussian weight noise: std = k × each layer's weight std."""
    distill_epochs: tuple = param((5,), gt=0, le=MAX_EPOCHS)
    """Distillation of the classifiers: student epochs on the attacker's images."""
    distill_lr: float = param(0.05, gt=0, le=10)
    """Distillation: the student's peak SGD learning rate."""
    surrogate_epochs: tuple = param((6,), gt=0, le=MAX_EPOCHS)
    """Surrogate of the image service: epochs of the thief's U-Net (L2) on (A, service outputs)."""
    piracy_epochs: tuple = param((1, 2), gt=0, le=MAX_EPOCHS)
    """Piracy (null embedding, WaterMAS): epochs of the thief's embedding on its data."""
    piracy_lr: float = param(0.01, gt=0, le=10)
    """Piracy: constant SGD learning rate of the thief's embedding."""
    overwrite_psnr: tuple = param((40.0, 35.0, 30.0), gt=0, le=200)
    """Overwrite of the image service: PSNR (dB) of the thief's spread-spectrum mark on each output."""
    ss_bits: int = param(64, ge=1, le=MAX_PAIRS)
    """Payload of the thief's spread-spectrum mark."""
    useful_drop: float = param(0.02, gt=0, lt=1)
    """Verdicts: a classifier attack is 'cheap' when it costs at most this much test accuracy (2 points)."""
    useful_psnr_drop: float = param(1.0, gt=0, le=200)
    """Verdicts: an image-service attack is 'cheap' when it costs at most this many dB of PSNR."""
    timings: bool = True
    """Record the wall-clock seconds of every training and attack as `seconds` rows. They differ from
    run to run, so the smoke profile (where CI compares two same-seed tables) leaves them out."""

    PROFILE_DEFAULTS = {
        "smoke": dict(seeds=1, width=8, n_train=1500, n_attacker=500, n_test=300, epochs=1, n_bits=64, size=16,
                      n_owner=96, n_attacker_pairs=64, n_test_pairs=24, m_epochs=1, stage1_epochs=1,
                      finetune_epochs=(0.5,), prune_amounts=(0.5, 0.9), quant_bits=(8, 2), noise_k=(0.1, 1.0),
                      distill_epochs=(0.5,), surrogate_epochs=(1,), piracy_epochs=(0.5,), overwrite_psnr=(35.0,),
                      timings=False),
        # cpu: one seed of an earlier, larger default (n_attacker 5000, n_test 2000, n_owner 1200, 1000
        # attacker pairs, 200 test pairs, fine-tuning and piracy 1 and 3 epochs) measured 705 s on one
        # contended core: the attacker's data, the test sets and the owner's pairs (1200 → 1000) were
        # cut for the 15-minute budget, the classifiers' training budget kept (its models verified:
        # NE 86.2%, WaterMAS 86.9% with BER 0, the service 44.4 dB from M's outputs, R's success 1.0).
        # Three seeds with 600 attacker pairs then took 8.2 min on 2 cores; 2000 pairs and the image
        # service's piracy row took 15.2 min, so the thief holds 1500.
        "cpu": dict(),
        # not timed on a GPU yet: about four times the cpu profile's data and wider networks (the
        # image study's gpu widths), with stage 2
        "gpu": dict(width=32, n_train=50000, n_attacker=10000, n_test=10000, epochs=6, batch_size=256,
                    n_owner=3000, n_attacker_pairs=2000, n_test_pairs=500, m_epochs=10, stage1_epochs=12,
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

    # The studies' own Configs at this suite's common budget: each method keeps its own recipe
    # (optimizer, learning rate, clip, λ, pattern, κ, ρ, loss weights), only data and epochs are shared.

    def ne_config(self, seed: int) -> ne.Config:
        return ne.Config.from_profile(self.profile, seed=seed, model="smallcnn", width=self.width, n_train=self.n_train,
                                      n_test=self.n_test, n_verify=self.n_test, epochs=self.epochs,
                                      batch_size=self.batch_size)

    def wmas_config(self) -> wmas.Config:
        return wmas.Config.from_profile(self.profile, models=("smallcnn",), width=self.width, n_train=self.n_train,
                                        n_test=self.n_test, epochs=self.epochs, batch_size=self.batch_size,
                                        n_bits=self.n_bits, large_n_train=self.n_train, large_n_test=self.n_test,
                                        sharpness_samples=min(1000, self.n_test))

    def ip_config(self, seed: int) -> ip.Config:
        return ip.Config.from_profile(self.profile, seed=seed, size=self.size, n_owner=self.n_owner,
                                      n_attacker=self.n_attacker_pairs, n_test=self.n_test_pairs,
                                      m_epochs=self.m_epochs, stage1_epochs=self.stage1_epochs,
                                      stage2_epochs=self.stage2_epochs, sm_epochs=max(self.surrogate_epochs),
                                      ss_bits=(self.ss_bits,))

    @property
    def ber_threshold(self) -> float:
        return ber_threshold(self.n_bits, self.ber_fpr)

    def grid(self, method: str, attack: str) -> list:
        """The strengths of ATTACK against METHOD, weakest first (empty where PLAN has no such cell)."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}: choose from {', '.join(ATTACKS)}")
        if attack not in PLAN[method] or attack not in self.attacks:
            return []
        if attack == "overwrite":
            return list(wmas.OVERWRITE_MODES) if method == "watermas" else list(self.overwrite_psnr)
        if attack == "piracy" and method == "deep":  # the thief's stage 1, at the owner's budget
            return [self.stage1_epochs]
        return list({"finetune": self.finetune_epochs, "prune": self.prune_amounts, "quantize": self.quant_bits,
                     "noise": self.noise_k, "distill": self.distill_epochs, "surrogate": self.surrogate_epochs,
                     "piracy": self.piracy_epochs}[attack])


# ---------------------------------------------------------------------------------------------
# Data: one set for every seed
# ---------------------------------------------------------------------------------------------


@dataclass
class SuiteData:
    """Fashion-MNIST split owner / attacker / test, and deraining pairs owner / attacker / test
    (from disjoint photos). None where no method needs them."""

    x_own: torch.Tensor | None = None
    y_own: torch.Tensor | None = None
    x_att: torch.Tensor | None = None
    y_att: torch.Tensor | None = None
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    own: ip.Pairs | None = None
    att: ip.Pairs | None = None
    test: ip.Pairs | None = None


def load_data(cfg: Config, device) -> SuiteData:
    d = SuiteData()
    if {"null_embedding", "watermas"} & set(cfg.methods):
        ds = data.load_classification("fashion_mnist", n_train=cfg.n_train + cfg.n_attacker, n_test=cfg.n_test,
                                      seed=cfg.seed, device=device)
        d.x_own, d.y_own = ds.x_train[:cfg.n_train], ds.y_train[:cfg.n_train]
        d.x_att, d.y_att = ds.x_train[cfg.n_train:], ds.y_train[cfg.n_train:]
        d.x_test, d.y_test = ds.x_test, ds.y_test
    if "deep" in cfg.methods:
        icfg = cfg.ip_config(cfg.seed)
        ip.watermark_image(icfg.watermark, icfg.size, icfg.seed)  # the logo file is checked before any training
        owner_photos, attacker_photos = ip.split_photos(data.photos("train"))
        d.own = ip.make_pairs(owner_photos, cfg.n_owner, cfg.size, cfg.seed, icfg.rain, device)
        d.att = ip.make_pairs(attacker_photos, cfg.n_attacker_pairs, cfg.size, cfg.seed + 1, icfg.rain, device)
        d.test = ip.make_pairs(data.photos("test"), cfg.n_test_pairs, cfg.size, cfg.seed + 2, icfg.rain, device)
    return d


# ---------------------------------------------------------------------------------------------
# The image service as one module, and how its outputs are judged
# ---------------------------------------------------------------------------------------------


def score_images(outputs: torch.Tensor, clean: torch.Tensor, wmk: ip.DeepWatermark, tau: float,
                 threshold: float) -> dict[str, float]:
    """Utility (PSNR of the delivered OUTPUTS against the clean ground truth) and R's verdict."""
    e = ip.verify(wmk, outputs, tau)
    return {"psnr": ip.image_quality(outputs, clean)["psnr"], "success_rate": e.success_rate,
            "nc": e.metrics()["nc"], "verified": float(e.success_rate >= threshold)}


# ---------------------------------------------------------------------------------------------
# The attacks, as generators of (attack, strength, attacked model or outputs, thief's claim)
# ---------------------------------------------------------------------------------------------

Attacked = Iterator[tuple[str, str, Any, dict | None]]


def weight_attacks(cfg: Config, method: str, model: nn.Module, seed: int) -> Attacked:
    """prune, quantize and noise: the same functions and grid for every method (white box)."""
    for amount in cfg.grid(method, "prune"):
        yield "prune", fmt(amount), attacks.prune(model, amount, scope=cfg.prune_scope), None
    for bits in cfg.grid(method, "quantize"):
        yield "quantize", fmt(bits), attacks.quantize(model, bits), None
    for k in cfg.grid(method, "noise"):
        yield "noise", fmt(k), attacks.weight_noise(model, k, seed=seed), None


def classifier_attacks(cfg: Config, method: str, model: nn.Module, d: SuiteData, seed: int) -> Attacked:
    """The attacks that do not depend on the watermark: fine-tuning, weights, distillation."""
    for ep in cfg.grid(method, "finetune"):
        yield "finetune", fmt(ep), attacks.finetune(model, d.x_att, d.y_att, epochs=ep, lr=cfg.finetune_lr, fraction=1.0,
                                                    seed=seed, batch_size=cfg.batch_size), None
    yield from weight_attacks(cfg, method, model, seed)
    for ep in cfg.grid(method, "distill"):
        seed_everything(seed + _DISTILL)  # the student's initialisation
        student = wmas.build_model("smallcnn", cfg.wmas_config())  # the same small CNN as every classifier here
        yield "distill", fmt(ep), attacks.distill(model, student.to(d.x_att.device), d.x_att, epochs=ep,
                                                  lr=cfg.distill_lr, seed=seed, batch_size=cfg.batch_size), None


def ne_piracy(cfg: Config, model: nn.Module, d: SuiteData, seed: int) -> Attacked:
    """The pirate (party 1 of this seed) fine-tunes its own null embedding into MODEL."""
    ncfg = cfg.ne_config(seed)
    sig = ncfg.owner(1).sign(ncfg.timestamp)
    for ep in cfg.grid("null_embedding", "piracy"):
        pirated = ne.pirate(model, ncfg.watermark(sig), d.x_att, d.y_att, fraction=1.0, epochs=ep, lr=cfg.piracy_lr,
                            seed=seed, w_null=ncfg.w_null, w_true=ncfg.w_true, batch_size=cfg.batch_size,
                            grad_clip=ncfg.grad_clip)
        v = ne.verify(pirated, sig, d.x_test, d.y_test, ncfg.n, ncfg.lam, 10, ncfg.threshold)
        yield "piracy", fmt(ep), pirated, {"wm_acc_null": v.acc_null, "wm_acc_true": v.acc_true,
                                           "verified": float(v.verified)}


def watermas_reembed(model: nn.Module, wcfg: wmas.Config, x: torch.Tensor, y: torch.Tensor, epochs: float,
                     lr: float, seed: int, batch_size: int) -> tuple[nn.Module, wmas.Key]:
    """A copy of MODEL carrying the thief's own WaterMAS key (drawn with SEED on the stolen weights):
    values written, then fine-tuned on (X, Y) with the sharpness hook at a constant LR."""
    pirated = copy.deepcopy(model)
    key = wmas.draw_key(pirated, wcfg.n_bits, seed=seed, kappa=wcfg.kappa)
    wmas.embed_values(pirated, key)
    tc = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=wcfg.weight_decay, seed=seed,
                     schedule="constant")
    fit(pirated, x, y, tc, hooks=wmas.make_hooks("watermas", key, wcfg, seed))
    return pirated, key


def watermas_specific(cfg: Config, model: nn.Module, key: wmas.Key, d: SuiteData, seed: int) -> Attacked:
    """overwrite (the owner's key intercepted) and piracy (a second WaterMAS key of the thief's)."""
    for mode in cfg.grid("watermas", "overwrite"):
        yield "overwrite", mode, wmas.overwrite(model, key, mode, seed=seed + _OVERWRITE), None
    wcfg = cfg.wmas_config()
    for ep in cfg.grid("watermas", "piracy"):
        pirated, thief_key = watermas_reembed(model, wcfg, d.x_att, d.y_att, ep, cfg.piracy_lr, seed + _PIRATE,
                                              cfg.batch_size)
        b = wmas.ber(pirated, thief_key)
        yield "piracy", fmt(ep), pirated, {"ber": b, "verified": float(b <= cfg.ber_threshold)}


def service_attacks(cfg: Config, icfg: ip.Config, net: nn.Module, d: SuiteData, seed: int) -> Attacked:
    """Every attack on the image service NET (M∘H, or the clean M for the control). `overwrite`
    yields delivered output images instead of a model."""
    for ep in cfg.grid("deep", "finetune"):  # white box: the whole composite on clean pairs, L1
        yield "finetune", fmt(ep), attacks.finetune(
            net, d.att.a, d.att.clean, epochs=ep, lr=cfg.finetune_lr_i2i, fraction=1.0, seed=seed, loss="l1",
            optimizer="adam", weight_decay=0.0, batch_size=icfg.batch_size, amp=False), None
    yield from weight_attacks(cfg, "deep", net, seed)
    surrogate_targets = ip.deliver(ip.apply(net, d.att.a)) if cfg.grid("deep", "surrogate") else None
    for ep in cfg.grid("deep", "surrogate"):  # black box: a U-Net on (A, what the service returned)
        sm, _ = ip.train_surrogate(dataclasses.replace(icfg, sm_epochs=ep), "unet", "l2", d.att.a, surrogate_targets,
                                   seed=seed + _SURROGATE)
        yield "surrogate", fmt(ep), sm, None
    served = ip.deliver(ip.apply(net, d.test.a)) if cfg.grid("deep", "overwrite") else None
    for psnr in cfg.grid("deep", "overwrite"):  # the thief's own mark on every output it resells
        ss = ip.SpreadSpectrum.create(cfg.ss_bits, cfg.size, psnr, seed + _OVERWRITE)
        out = ss.embed(served)
        yield "overwrite", fmt(psnr), out, {"bit_acc": ss.bit_accuracy(out)}
    for ep in cfg.grid("deep", "piracy"):
        thief = service_piracy(cfg, icfg, net, d, ep, seed + _PIRATE)
        out = thief.embed(ip.deliver(ip.apply(net, d.test.a)))
        sr = ip.verify(thief, out, icfg.tau).success_rate
        yield "piracy", fmt(ep), out, {"success_rate": sr, "verified": float(sr >= cfg.sr_threshold)}


def service_piracy(cfg: Config, icfg: ip.Config, net: nn.Module, d: SuiteData, epochs: float,
                   seed: int) -> ip.DeepWatermark:
    """The thief's own deep watermark for the stolen service NET: H′ and R′ with the image study's
    recipe and a QR-like δ′ of its own, trained (stage 1, EPOCHS) on NET's delivered outputs for the
    first n_owner of the attacker's inputs: the owner's data budget, on the thief's data."""
    tcfg = dataclasses.replace(icfg, seed=seed, watermark="qr", stage1_epochs=epochs)
    k = min(cfg.n_owner, len(d.att.a))
    a = d.att.a[:k]
    thief = ip.new_watermark(tcfg, a.device)
    ip.train_stage1(tcfg, thief, a, ip.deliver(ip.apply(net, a)), seed=seed)
    return thief


def recorder(results) -> Callable[..., None]:
    """ADD for `run_seed`: one row of RESULTS (a wm.results.Results) per metric of a run."""
    def add(*, seed: int, method: str, model: str, attack: str, strength: str | None, metrics: dict,
            experiment: str = "suite") -> None:
        for metric, value in metrics.items():
            results.add(method=method, model=model, experiment=experiment, attack=attack, strength=strength,
                        seed=seed, metric=metric, value=value)
    return add


# ---------------------------------------------------------------------------------------------
# One seed: build, attack, record
# ---------------------------------------------------------------------------------------------


def run_seed(cfg: Config, d: SuiteData, seed: int, add: Callable[..., None]) -> dict[str, float]:
    """Build every method's watermarked model and control for SEED, run the grid through each, and
    call ADD(seed=, method=, model=, attack=, strength=, metrics=, experiment=) once per measured
    run (`recorder` makes one that writes results rows).
    Returns the wall-clock seconds per phase."""
    phases: dict[str, float] = {}
    device = (d.x_own if d.x_own is not None else d.own.a).device
    secs = (lambda s: {"seconds": s}) if cfg.timings else (lambda s: {})

    def timed(phase: str, started: float) -> float:
        spent = time.perf_counter() - started
        phases[phase] = phases.get(phase, 0.0) + spent
        return spent

    def run(attacked_models: Attacked, judges: list, utility: Callable[[Any], dict], phase: str) -> None:
        """Score each attacked model: its utility once, then each judge (plan method, method, model
        name, detector) whose method PLAN pairs with that attack."""
        t = time.perf_counter()
        for attack, strength, attacked, claim in attacked_models:
            spent = time.perf_counter() - t  # the attack's own cost (training, for the training attacks)
            u = utility(attacked)
            for plan_method, method, model_name, detect in judges:
                if attack not in PLAN[plan_method]:
                    continue
                add(seed=seed, method=method, model=model_name, attack=attack, strength=strength,
                    metrics={**u, **detect(attacked), **secs(spent)})
                if claim is not None and method != "none":  # the thief's own watermark, where it adds one
                    add(seed=seed, method=method, model=model_name, attack=attack, strength=strength, metrics=claim,
                        experiment="suite_thief_claim")
            timed(phase, t)
            t = time.perf_counter()

    classifiers = [m for m in ("null_embedding", "watermas") if m in cfg.methods]
    if classifiers:
        def utility(model):
            return {"test_acc": evaluate(model, d.x_test, d.y_test)}

        t = time.perf_counter()
        wcfg = cfg.wmas_config()
        # the control: WaterMAS's own clean twin (same initialisation, data and recipe, nothing written)
        clean, _, h_clean = wmas.train(wcfg, "none", d.x_own, d.y_own, seed=seed)
        marked, detectors, specific = {}, {}, {}
        if "null_embedding" in classifiers:
            ncfg = cfg.ne_config(seed)
            sig = ncfg.owner(0).sign(ncfg.timestamp)
            marked["null_embedding"] = ne.train_model(ncfg, d.x_own, d.y_own, seed=seed, wm=ncfg.watermark(sig))

            def detect_ne(model):
                v = ne.verify(model, sig, d.x_test, d.y_test, ncfg.n, ncfg.lam, 10, ncfg.threshold)
                return {"wm_acc_null": v.acc_null, "wm_acc_true": v.acc_true, "verified": float(v.verified)}
            detectors["null_embedding"] = detect_ne
            specific["null_embedding"] = lambda model: ne_piracy(cfg, model, d, seed)
        if "watermas" in classifiers:
            model, key, hist = wmas.train(wcfg, "watermas", d.x_own, d.y_own, seed=seed)
            marked["watermas"] = (model, hist)

            def detect_wm(model):
                b = wmas.ber(model, key)
                return {"ber": b, "verified": float(b <= cfg.ber_threshold)}
            detectors["watermas"] = detect_wm
            # the owner's key is what overwrite targets, on the control too (where it marks nothing)
            specific["watermas"] = lambda model: watermas_specific(cfg, model, key, d, seed)
        timed("train classifiers", t)

        for method in classifiers:  # unattacked rows
            model, hist = marked[method]
            add(seed=seed, method=method, model=MODEL[method], attack="none", strength=None,
                metrics={**utility(model), **detectors[method](model), **secs(hist.seconds)})
            add(seed=seed, method="none", model=CONTROL_MODEL[method], attack="none", strength=None,
                metrics={**utility(clean), **detectors[method](clean), **secs(h_clean.seconds)})
        for method in classifiers:  # the grid against each watermarked model
            judge = [(method, method, MODEL[method], detectors[method])]
            run(classifier_attacks(cfg, method, marked[method][0], d, seed), judge, utility, f"attack {method}")
            run(specific[method](marked[method][0]), judge, utility, f"attack {method}")
        # the control: the attacks that ignore the watermark run once on the clean model and every
        # detector reads the same attacked model; piracy and overwrite are each method's own
        controls = [(m, "none", CONTROL_MODEL[m], detectors[m]) for m in classifiers]
        run(classifier_attacks(cfg, classifiers[0], clean, d, seed), controls, utility, "attack controls")
        for control in controls:
            run(specific[control[0]](clean), [control], utility, "attack controls")

    if "deep" in cfg.methods:
        t = time.perf_counter()
        icfg = cfg.ip_config(seed)
        m_net, _ = ip.train_target(icfg, d.own, seed=seed)
        b_own = ip.deliver(ip.apply(m_net, d.own.a))
        wmk = ip.new_watermark(icfg, device)
        ip.train_stage1(icfg, wmk, d.own.a, b_own, seed=seed)
        if cfg.stage2:
            bw_own = wmk.embed(b_own)
            defender, _ = ip.train_surrogate(icfg, icfg.defender_sm, "l2", d.own.a, bw_own, seed=seed + 99)
            ip.train_stage2(icfg, wmk, d.own.a, b_own, bw_own, ip.deliver(ip.apply(defender, d.own.a)), seed=seed)
        service = ip.Service(m_net, wmk.h, wmk.delta).eval()
        train_seconds = timed("train deep", t)

        def judge(x):
            out = x if isinstance(x, torch.Tensor) else ip.deliver(ip.apply(x, d.test.a))  # overwrite yields images
            return score_images(out, d.test.clean, wmk, icfg.tau, cfg.sr_threshold)

        served = ip.deliver(ip.apply(service, d.test.a))
        add(seed=seed, method="deep", model=MODEL["deep"], attack="none", strength=None,
            metrics={**judge(served), **secs(train_seconds)})
        # invisibility: the service's outputs against M's own (the image study's PSNR(B′, B))
        add(seed=seed, method="deep", model=MODEL["deep"], attack="none", strength=None, experiment="invisibility",
            metrics=ip.image_quality(served, ip.deliver(ip.apply(m_net, d.test.a))))
        add(seed=seed, method="none", model=CONTROL_MODEL["deep"], attack="none", strength=None, metrics=judge(m_net))
        nothing = lambda x: {}  # noqa: E731  (judge scores utility and the watermark from the same outputs)
        run(service_attacks(cfg, icfg, service, d, seed), [("deep", "deep", MODEL["deep"], nothing)], judge,
            "attack deep")
        run(service_attacks(cfg, icfg, m_net, d, seed), [("deep", "none", CONTROL_MODEL["deep"], nothing)], judge,
            "attack deep control")
    return phases


# ---------------------------------------------------------------------------------------------
# Reading the table back: one row per run, and the methods × attacks summary
# ---------------------------------------------------------------------------------------------

CONTROLLED = {name: method for method, name in CONTROL_MODEL.items()}
"""A control's `model` → the method it controls for."""


def wide(frame):
    """The tidy rows of experiment `suite` (a Results frame or the CSV read back by wm.results.load)
    as one row per run: method, model, attack, strength, seed, one column per metric, and
    `for` (the method a row speaks about: its own, or the one a control controls for), `role`
    (watermarked or control), `utility` (test accuracy, or PSNR in dB for the image service) and
    `score` (what the survival rule thresholds: min(acc_null, acc_true), BER, or R's success rate)."""
    import pandas as pd
    f = frame[frame.experiment == "suite"].copy()
    f["strength"] = f["strength"].astype(str)
    w = f.pivot_table(index=["method", "model", "attack", "strength", "seed"], columns="metric", values="value",
                      aggfunc="first", sort=False).reset_index()
    w.columns.name = None
    w["for"] = [CONTROLLED.get(m, meth) if meth == "none" else meth for meth, m in zip(w.method, w.model)]
    w["role"] = ["control" if meth == "none" else "watermarked" for meth in w.method]
    acc = w["test_acc"] if "test_acc" in w else pd.Series(float("nan"), index=w.index)
    psnr = w["psnr"] if "psnr" in w else pd.Series(float("nan"), index=w.index)
    w["utility"] = [p if f_ == "deep" else a for f_, a, p in zip(w["for"], acc, psnr)]
    col = lambda name: w[name] if name in w else pd.Series(float("nan"), index=w.index)  # noqa: E731
    score = {"null_embedding": pd.concat([col("wm_acc_null"), col("wm_acc_true")], axis=1).min(axis=1, skipna=False),
             "watermas": col("ber"), "deep": col("success_rate")}
    w["score"] = [score[f_][i] for i, f_ in zip(w.index, w["for"])]
    return w


def utility_cost(method: str, before: float, after: float) -> float:
    """What an attack costs the model, in the method's unit: accuracy points, or dB of PSNR."""
    return (before - after) * (1 if method == "deep" else 100)


def summary(w, cfg: Config):
    """Methods × attacks from the runs of `wide`: where the watermark survives on every seed, on
    some, where a majority of seeds lost it first and what the attacked model had lost there, the
    erasure that cost the model least, whether one cost at most the 'cheap' budget (useful_drop,
    useful_psnr_drop), and how often the detector accepted the attacked clean control."""
    import pandas as pd
    rows = []
    for method in cfg.methods:
        unit = "dB" if method == "deep" else "points"
        cheap = cfg.useful_psnr_drop if method == "deep" else 100 * cfg.useful_drop
        mine = w[(w["for"] == method) & (w.role == "watermarked")]
        base = mine[mine.attack == "none"].utility.mean()
        for attack in ATTACKS:
            grid = [fmt(s) for s in cfg.grid(method, attack)]
            if not grid:
                if (method, attack) in NOT_RUN and attack in cfg.attacks:
                    rows.append({"method": method, "attack": attack, "survives on every seed": "not run",
                                 "note": NOT_RUN[method, attack]})
                continue
            runs = mine[mine.attack == attack]
            share = runs.groupby("strength").verified.mean()
            cost = runs.groupby("strength").utility.mean().map(lambda u: utility_cost(method, base, u))
            kept = [s for s in grid if share.get(s, float("nan")) == 1]
            some = [s for s in grid if 0 < share.get(s, float("nan")) < 1]
            lost = [s for s in grid if share.get(s, float("nan")) < 0.5]
            ctl = w[(w["for"] == method) & (w.role == "control") & (w.attack == attack)]
            first = lost[0] if lost else None
            rows.append({
                "method": method, "attack": attack,
                "survives on every seed": ", ".join(kept) or "none",
                "on some seeds": ", ".join(f"{s} ({share[s]:.0%})" for s in some) or "",
                "erased (majority) from": first or "never",
                "utility cost there": (f"{cost[first]:.2f} {unit}" if first else ""),
                "cheapest erasure": (f"{min(lost, key=cost.get)} ({cost[min(lost, key=cost.get)]:.2f} {unit})"
                                     if lost else ""),
                "cheap erasure": bool(any(cost[s] <= cheap for s in lost)),
                "max utility cost while surviving": (f"{max(cost[s] for s in kept):.2f} {unit}" if kept else ""),
                "control fired": f"{int(ctl.verified.sum())}/{len(ctl)}",
                "note": "",
            })
    return pd.DataFrame(rows)
