"""Null embedding (Li, Wenger, Shan, Zhao, Zheng: Piracy Resistant Watermarks for DNNs).

The owner signs a verifier string (owner id + timestamp) with a real Ed25519 key; SHA-256 of
the signature, under one domain tag per field, gives the watermark: a target label y_W, an
n×n bit pattern and its position. Training from scratch then sees three streams each step:
clean images; the same images *null*-stamped (bit 1 → +λ, bit 0 → −λ, true label kept), which
teaches the model to ignore the pattern; and the same images *true*-stamped with the inverted
pattern and relabelled y_W, which gives the verifiable behaviour. Verification checks the
signature first, regenerates the pattern from it and measures both accuracies on held-out
test images against a threshold T.

What the sources fix and what this module chose (see ../shared/papers/paper2-null-embedding.md):
the sign convention, n = 6, T = 0.8 and the 1 : 0.25 : 0.25 loss weights follow the public
reimplementations (the paper's text was not available). The hash layout is this module's own:
one SHA-256 per field with a domain tag, never Python's hash(). λ is in the units of the
normalised input tensor the model consumes ((x/255 − mean)/std): in-range pixels lie within
about ±3, so λ = 1 is the in-range control and λ in the thousands is "out of bound".

BatchNorm: the stamped streams are forwarded with every BatchNorm layer in eval mode, so batch
statistics and running estimates come from clean images only (the notebook compares this with
a BatchNorm-free network).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from torch import nn

from wm.config import (FASHION_TEST, FASHION_TRAIN, MAX_BATCH, MAX_EPOCHS, MAX_SEED, MAX_SEEDS, MAX_WIDTH,
                       StudyConfig, param, require)
from wm.data import FASHION_STD
from wm.models import SmallCNN, resnet18
from wm.train import Hook, TrainConfig, fit, predict, seed_everything

# ---------------------------------------------------------------------------------------------
# Identity, signature and the watermark derived from it
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """What an owner publishes to claim a model: verifier string, signature, public key."""

    verifier: str
    signature: bytes
    public_key: bytes

    def is_valid(self) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(self.signature, self.verifier.encode())
            return True
        except (InvalidSignature, ValueError):
            return False


class Owner:
    """An Ed25519 key pair with an id. Ed25519 signatures are deterministic, so the same key and
    verifier string always give the same watermark, on every machine."""

    def __init__(self, owner_id: str, private_key: Ed25519PrivateKey):
        self.owner_id, self._key = owner_id, private_key

    @classmethod
    def generate(cls, owner_id: str) -> "Owner":
        """A fresh key from the operating system's randomness (what a real owner does)."""
        return cls(owner_id, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, owner_id: str, seed: int) -> "Owner":
        """A reproducible key derived from (owner_id, seed): the study re-runs bit for bit.
        Anyone knowing the id and the seed can recompute it: fine for a study, not for an owner."""
        secret = hashlib.sha256(f"wm-study owner key|{owner_id}|{seed}".encode()).digest()
        return cls(owner_id, Ed25519PrivateKey.from_private_bytes(secret))

    def sign(self, timestamp: str) -> Signature:
        verifier = f"{self.owner_id}|{timestamp}"
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return Signature(verifier, self._key.sign(verifier.encode()), public)


@dataclass(frozen=True)
class Watermark:
    """The pattern a signature yields: target label, n×n bits, top-left corner, magnitude λ."""

    target: int
    bits: tuple[int, ...]
    row: int
    col: int
    n: int
    lam: float

    def square(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.n), slice(self.col, self.col + self.n)

    def values(self, mode: str) -> torch.Tensor:
        """n×n pixel values: null writes +λ for a 1 bit and −λ for a 0 bit; true the inverse."""
        signs = torch.tensor(self.bits, dtype=torch.float32).view(self.n, self.n) * 2 - 1
        return signs * self.lam * (1 if mode == "null" else -1)

    def overlap(self, other: "Watermark") -> int:
        """Pixels shared by this square and OTHER's (the pirate's may sit on top of the owner's)."""
        rows = max(0, min(self.row + self.n, other.row + other.n) - max(self.row, other.row))
        cols = max(0, min(self.col + self.n, other.col + other.n) - max(self.col, other.col))
        return rows * cols


def _digest(tag: str, signature: bytes) -> int:
    return int.from_bytes(hashlib.sha256(tag.encode() + b"|" + signature).digest(), "big")


def derive(sig: Signature, n: int, lam: float, num_classes: int, height: int, width: int) -> Watermark:
    """The watermark of a signature: one SHA-256 per field, each under its own domain tag."""
    if not 1 <= n <= min(height, width, 16):  # 16×16 = 256 bits = one SHA-256
        raise ValueError(f"n={n} must be in 1..{min(height, width, 16)}")
    word = _digest("bits", sig.signature)
    bits = tuple((word >> (255 - i)) & 1 for i in range(n * n))
    return Watermark(target=_digest("label", sig.signature) % num_classes, bits=bits,
                     row=_digest("row", sig.signature) % (height - n + 1),
                     col=_digest("col", sig.signature) % (width - n + 1), n=n, lam=float(lam))


@lru_cache(maxsize=64)
def _pattern_on(wm: Watermark, mode: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Built once per (watermark, device): stamping runs every training step, and rebuilding the
    # values would cost a host-to-device copy per step on a GPU.
    return wm.values(mode).to(device, dtype)


def stamp(x: torch.Tensor, wm: Watermark, mode: str) -> torch.Tensor:
    """A copy of the normalised batch X with the pattern written into every channel, unclamped."""
    if mode not in ("null", "true"):
        raise ValueError(f"mode={mode!r} must be 'null' or 'true'")
    out = x.clone()
    rows, cols = wm.square()
    out[:, :, rows, cols] = _pattern_on(wm, mode, x.device, x.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module):
    """BatchNorm layers in eval mode: stamped samples neither set the batch statistics nor
    update the running estimates, which come from clean images only."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m in bns:
            m.train()


class NullEmbeddingHook(Hook):
    """Adds the null and true streams to every training step: w_null·CE(null) + w_true·CE(true).

    The stamped streams take the first FRACTION of the (already shuffled) clean batch: 1.0 is the
    1 : 1 : 1 recipe of the public reimplementation (dunky11), 0.25 costs 1.5 clean passes a step
    instead of 2.8 and measured the same acc_null (see Config.stamp_fraction).
    bn="frozen" forwards them with BatchNorm in eval mode (clean statistics only); bn="shared"
    lets them into the batch statistics and running estimates: the polluted variant the
    notebook measures against.
    """

    def __init__(self, wm: Watermark, w_null: float = 0.25, w_true: float = 0.25, fraction: float = 1.0,
                 bn: str = "frozen"):
        if bn not in ("frozen", "shared"):
            raise ValueError(f"bn={bn!r} must be 'frozen' or 'shared'")
        self.wm, self.w_null, self.w_true, self.fraction, self.bn = wm, w_null, w_true, fraction, bn

    def extra_loss(self, model, x, y, out):
        k = max(1, round(self.fraction * len(x)))
        x, y = x[:k], y[:k]
        bn = frozen_batchnorm(model) if self.bn == "frozen" else contextlib.nullcontext()
        y_true = torch.full_like(y, self.wm.target)
        with bn, torch.autocast(x.device.type, enabled=False):
            # fp32: λ in the thousands overflows what bf16 keeps of the first layer's sums
            x_null, x_true = stamp(x, self.wm, "null").float(), stamp(x, self.wm, "true").float()
            if self.bn == "frozen":
                # BatchNorm in eval mode treats every sample alone, so one pass over both streams
                # gives the same losses as two (to float rounding) and is faster: 1.07x a step for
                # the cpu profile's SmallCNN on 2 cores (benchmarks/bench.py)
                out = model(torch.cat([x_null, x_true]))
                loss_null, loss_true = F.cross_entropy(out[:k], y), F.cross_entropy(out[k:], y_true)
            else:  # shared: each stream's batch statistics are its own, as before
                loss_null = F.cross_entropy(model(x_null), y)
                loss_true = F.cross_entropy(model(x_true), y_true)
        return self.w_null * loss_null + self.w_true * loss_true


def embed(model: nn.Module, wm: Watermark, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
          w_null: float = 0.25, w_true: float = 0.25, fraction: float = 1.0, bn: str = "frozen"):
    """Train MODEL from its current weights with the three streams (from scratch for the owner)."""
    return fit(model, x, y, cfg, hooks=[NullEmbeddingHook(wm, w_null, w_true, fraction, bn)])


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


@dataclass
class Verification:
    """The outcome of one ownership check, with the reason when it fails."""

    signature_valid: bool
    acc_null: float
    acc_true: float
    threshold: float
    verified: bool
    reason: str
    target: int = -1
    details: dict = field(default_factory=dict)


def watermark_accuracies(model: nn.Module, wm: Watermark, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(acc_null, acc_true) on X in eval mode. acc_true skips images whose label already is y_W:
    those would count as hits for any model."""
    pred_null = predict(model, stamp(x, wm, "null"), amp=False).argmax(1)
    acc_null = (pred_null == y).float().mean().item()
    keep = y != wm.target
    pred_true = predict(model, stamp(x[keep], wm, "true"), amp=False).argmax(1)
    acc_true = (pred_true == wm.target).float().mean().item()
    return acc_null, acc_true


def verify(model: nn.Module, sig: Signature, x: torch.Tensor, y: torch.Tensor, n: int, lam: float,
           num_classes: int, threshold: float = 0.8) -> Verification:
    """Check SIG against its public key, regenerate its pattern, and test MODEL on held-out (X, Y):
    verified when the signature is valid and both accuracies reach THRESHOLD."""
    if not sig.is_valid():
        nan = float("nan")
        return Verification(False, nan, nan, threshold, False, "the signature does not verify under the public key")
    wm = derive(sig, n, lam, num_classes, x.shape[-2], x.shape[-1])
    acc_null, acc_true = watermark_accuracies(model, wm, x, y)
    ok = min(acc_null, acc_true) >= threshold
    reason = "both accuracies reach the threshold" if ok else \
        f"{'acc_null' if acc_null < threshold else 'acc_true'} below {threshold}"
    return Verification(True, acc_null, acc_true, threshold, ok, reason, wm.target)


def transferred_accuracies(model: nn.Module, wm: Watermark, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int]:
    """Null/true behaviour of a model transferred to a NEW task (new head, new labels), on that
    task's held-out (X, Y). y_W has no meaning in the new label space, so acc_true is the share
    of true-stamped images sent to their most frequent prediction (the owner can only ask
    "does the pattern still force one class?"), images of that class left out; acc_null is the
    new task's accuracy on null-stamped images. Returns (acc_null, acc_true, that class).
    This adaptation is the study's own: the paper's transfer protocol is not known."""
    pred_null = predict(model, stamp(x, wm, "null"), amp=False).argmax(1)
    acc_null = (pred_null == y).float().mean().item()
    pred_true = predict(model, stamp(x, wm, "true"), amp=False).argmax(1)
    target = int(torch.bincount(pred_true).argmax())
    keep = y != target
    acc_true = (pred_true[keep] == target).float().mean().item()
    return acc_null, acc_true, target


# ---------------------------------------------------------------------------------------------
# The pirate
# ---------------------------------------------------------------------------------------------


def pirate(model: nn.Module, wm: Watermark, x: torch.Tensor, y: torch.Tensor, fraction: float,
           epochs: float, lr: float, seed: int = 0, w_null: float = 0.25, w_true: float = 0.25,
           batch_size: int = 128, grad_clip: float | None = 5.0) -> nn.Module:
    """A copy of MODEL fine-tuned with clean + null′ + true′ samples of the pirate's watermark WM,
    on a seeded FRACTION of (X, Y): the piracy attack."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[:max(1, round(fraction * len(x)))].to(x.device)
    pirated = copy.deepcopy(model)
    # the pirate gets the owner's recipe, gradient clipping included
    embed(pirated, wm, x[idx], y[idx], TrainConfig(epochs=epochs, lr=lr, seed=seed, schedule="constant",
                                                   batch_size=batch_size, grad_clip=grad_clip), w_null, w_true)
    return pirated


# ---------------------------------------------------------------------------------------------
# The notebook's parameters and model factory
# ---------------------------------------------------------------------------------------------

# λ = 2000 read on the 0–255 pixel scale (one reimplementation's reading of the paper's value),
# expressed in the normalised units the model sees: 2000/255 in [0, 1] units, / Fashion-MNIST's std.
LAM_2000_ON_0_255 = round(2000 / 255 / FASHION_STD[0], 1)  # 22.2

# The transfer-learning split: the owner's model learns classes 0–4 (tops, trousers, dress,
# coat), the new task is classes 5–9 (sandal, shirt, sneaker, bag, ankle boot), never seen.
OWNER_CLASSES = (0, 1, 2, 3, 4)
TRANSFER_CLASSES = (5, 6, 7, 8, 9)

# The removal-attack grids (each attack's knob from harmless to destructive) and the pirate's
# learning rate in the λ/n sweep.
FINETUNE_LRS = (0.001, 0.01, 0.05)
PRUNE_AMOUNTS = (0.1, 0.3, 0.5, 0.7, 0.9)
QUANT_BITS = (8, 6, 4, 3, 2)
NOISE_K = (0.1, 0.25, 0.5, 1.0, 2.0)
SWEEP_PIRATE_LR = 0.01


@dataclass
class Config(StudyConfig):
    """Parameters of the null-embedding notebook."""

    profile: str = "cpu"
    """smoke, cpu or gpu (resolved from auto)."""
    seed: int = param(0, ge=0, le=MAX_SEED)
    """First seed; the chapter repeats every experiment on seeds seed, seed+1, …"""
    seeds: int = param(3, ge=1, le=MAX_SEEDS)
    """Repetitions of every experiment (mean ± 95% CI); seed s is party s's key and model seed,
    with party s+1 as its pirate (wm.ne_study)."""
    merged: str = ""
    """A sweep of this chapter over seeds (the merged table of `python -m wm sweep null_embedding
    --grid seed=0,1,2 -p seeds 1`): the chapter shows its runs instead of training."""
    model: str = param("smallcnn", choices=("smallcnn", "resnet18"))
    """Architecture of the fidelity models: smallcnn (cpu) or resnet18 (gpu)."""
    width: int = param(16, ge=1, le=MAX_WIDTH)
    """Width of the small CNN."""
    n_train: int = param(60000, ge=1, le=FASHION_TRAIN)
    """Training images drawn from Fashion-MNIST's 60 000."""
    n_test: int = param(10000, ge=1, le=FASHION_TEST)
    """Held-out test images: test accuracy, and the fidelity experiment's verification."""
    n_verify: int = param(2000, ge=1, le=FASHION_TEST)
    """The first n_verify test images: the verification set of every other check (false
    positives, piracy, attacks, sweeps), which runs dozens of verifications."""
    epochs: float = param(6, gt=0, le=MAX_EPOCHS)
    """Training epochs (from scratch) of clean and watermarked models."""
    batch_size: int = param(128, ge=2, le=MAX_BATCH)
    """Clean samples per step."""
    lr: float = param(0.2, gt=0, le=10)
    """Peak SGD learning rate (warm-up, cosine decay). 0.2: the candidate of (0.025 … 0.4) whose
    watermarked model is most accurate on a validation split held out of the training images
    (wm.tuning, the tuning chapter; 3 seeds). It was 0.1, chosen on seed 0's test accuracy."""
    n: int = param(6, ge=1, le=16)
    """Side of the square pattern (n² bits)."""
    lam: float = param(LAM_2000_ON_0_255, gt=0, le=1e6)
    """λ, in units of the normalised input tensor (in-range pixels lie in [−0.81, 2.02])."""
    w_null: float = param(0.25, ge=0, le=1e6)
    """Loss weight of the null stream."""
    w_true: float = param(0.25, ge=0, le=1e6)
    """Loss weight of the true stream."""
    stamp_fraction: float = param(0.25, gt=0, le=1)
    """Share of each clean batch that is also stamped null and true (1.0 = every image)."""
    grad_clip: float | None = param(5.0, gt=0, le=1e6)
    """Gradient-norm clip of every watermark training: out-of-bound stamps give huge first-step
    gradients, and without it training diverges (measured: λ = 20 reached a loss of 4e10)."""
    threshold: float = param(0.8, gt=0, le=1)
    """T: verification needs acc_null ≥ T and acc_true ≥ T."""
    n_random_signatures: int = param(20, ge=1, le=100000)
    """Random signatures tried against each owner's model (false positives)."""
    pirate_fraction: float = param(0.1, gt=0, le=1)
    """Share of the training set the pirate (and every removal attacker) holds."""
    pirate_lrs: tuple = param((0.001, 0.01, 0.05), gt=0, le=10)
    """Learning rates of the piracy grid."""
    pirate_epochs: tuple = param((1, 3), gt=0, le=MAX_EPOCHS)
    """Epochs of the piracy grid."""
    attack_epochs: float = param(2, gt=0, le=MAX_EPOCHS)
    """Epochs of the fine-tuning and transfer attacks (distillation gets twice as many)."""
    sweep_lams: tuple = param((1.0, 5.0, 200.0, 2000.0), gt=0, le=1e6)
    """λ values of the sweep (besides lam)."""
    sweep_ns: tuple = param((4, 8), of=int, ge=1, le=16)
    """Pattern sizes of the sweep (besides n)."""
    sweep_n_train: int = param(10000, ge=1, le=FASHION_TRAIN)
    """Training images of each sweep, BatchNorm-choice and transfer model (one model per point)."""
    sweep_epochs: float = param(4, gt=0, le=MAX_EPOCHS)
    """Epochs of those models."""
    useful_drop: float = param(0.02, gt=0, lt=1)
    """An attacked or pirated model counts as still useful when it loses at most this much test
    accuracy (0.02 = 2 points) against the model it started from: the verdicts' criterion."""
    timestamp: str = "2026-01-01T00:00:00Z"
    """Timestamp in the verifier strings (fixed so the study re-runs identically)."""

    PROFILE_DEFAULTS = {
        "smoke": dict(seeds=2, width=8, n_train=1000, n_test=500, n_verify=500, epochs=1, pirate_lrs=(0.01,),
                      pirate_epochs=(1,), attack_epochs=0.5, sweep_lams=(1.0,), sweep_ns=(4,),
                      sweep_n_train=1000, sweep_epochs=1, n_random_signatures=5),
        "cpu": dict(),
        # ResNet-18 for the fidelity models; the BatchNorm, transfer and sweep models stay small CNNs
        "gpu": dict(model="resnet18", epochs=10, sweep_n_train=60000, sweep_epochs=6, batch_size=256, lr=0.1),
    }

    def check(self) -> None:
        require(self.n_verify <= self.n_test, "n_verify", self.n_verify, f"at most n_test ({self.n_test})")
        # every model trains on a full batch at least; the pirate's share is max(1, ...) images
        require(self.n_train >= self.batch_size, "n_train", self.n_train, f"at least batch_size ({self.batch_size})")
        require(self.sweep_n_train >= self.batch_size, "sweep_n_train", self.sweep_n_train,
                f"at least batch_size ({self.batch_size})")

    def party(self, s: int) -> "Owner":
        """Party S of the study: the owner of seed S's models, and the pirate of seed S-1's. Keys
        are seeded so the study re-runs bit for bit, and a one-seed run of a sweep meets the same
        parties as a run over every seed."""
        return Owner.from_seed(f"party-{s}", s)

    def owner(self, k: int) -> "Owner":
        """Party k counted from this config's seed (the attack suite's owner 0 and pirate 1 of
        each seed; for seed 0 the same parties as `party`)."""
        return Owner.from_seed(f"party-{k}", self.seed + k)

    def watermark(self, sig: Signature, n: int | None = None, lam: float | None = None,
                  num_classes: int = 10) -> Watermark:
        return derive(sig, n or self.n, lam or self.lam, num_classes, 28, 28)

    def train_config(self, seed: int, epochs: float | None = None) -> TrainConfig:
        # no progress bars: in an executed notebook each refresh becomes a stored output
        return TrainConfig(epochs=epochs or self.epochs, batch_size=self.batch_size, lr=self.lr, seed=seed,
                           grad_clip=self.grad_clip, progress=False)


def build_model(cfg: Config, num_classes: int = 10, norm: str = "batch", small: bool = False) -> nn.Module:
    """The study's classifier, freshly initialised; SMALL forces the small CNN (sweep models)."""
    if cfg.model == "smallcnn" or small:
        return SmallCNN(in_channels=1, num_classes=num_classes, width=cfg.width, norm=norm)
    return resnet18(in_channels=1, num_classes=num_classes)


def train_model(cfg: Config, x: torch.Tensor, y: torch.Tensor, seed: int, wm: Watermark | None = None,
                num_classes: int = 10, epochs: float | None = None, norm: str = "batch", bn: str = "frozen",
                small: bool = False, **overrides):
    """A model trained from scratch on (X, Y): clean when WM is None, else null-embedded.
    OVERRIDES replace the Config's embedding fields (lam is in WM; w_null, w_true, stamp_fraction).
    Returns (model, History)."""
    seed_everything(seed)
    model = build_model(cfg, num_classes, norm, small).to(x.device)
    tc = cfg.train_config(seed, epochs)
    if wm is None:  # the clean reference: the same recipe (clip included) without the stamps
        return model, fit(model, x, y, tc)
    w_null = overrides.get("w_null", cfg.w_null)
    w_true = overrides.get("w_true", cfg.w_true)
    fraction = overrides.get("stamp_fraction", cfg.stamp_fraction)
    return model, embed(model, wm, x, y, tc, w_null, w_true, fraction, bn)
