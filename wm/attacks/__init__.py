"""Removal attacks every study shares, and their registry. Each returns a new model and leaves its
input untouched.

What the weight-space attacks touch: the weights of convolutions and linear layers, the tensors
that carry what a network has learnt (and where white-box watermarks live). Biases and
normalisation parameters are left alone, as in the pruning and quantization literature the
studies follow; `attacked_weights` lists exactly which tensors count.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from wm.train import TrainConfig, fit, predict

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


def attacked_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every convolution and linear layer, in model order."""
    return [(m, "weight") for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]


def _copy(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model)
    clone.eval()
    return clone


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: float = 1, lr: float = 0.01,
             fraction: float = 0.1, seed: int = 0, **train_kw) -> nn.Module:
    """Fine-tune a copy on a seeded random FRACTION of (X, Y) for EPOCHS at learning rate LR.

    The attacker's budget is the fraction of the training data it holds; extra keyword
    arguments go to TrainConfig (optimizer, batch_size, schedule, ...).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[:max(1, round(fraction * len(x)))].to(x.device)
    attacked = _copy(model)
    train_kw.setdefault("schedule", "constant")  # an attacker fine-tunes at a fixed rate unless told otherwise
    fit(attacked, x[idx], y[idx], TrainConfig(epochs=epochs, lr=lr, seed=seed, **train_kw))
    return attacked


def transfer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: float = 2,
             lr: float = 0.01, freeze_features: bool = False, seed: int = 0, **train_kw) -> nn.Module:
    """Transfer learning to a new task: a copy whose head is replaced by a fresh
    `nn.Linear(…, NUM_CLASSES)` and trained on the new task's (X, Y).

    freeze_features=True trains the new head alone (feature extraction; BatchNorm running
    statistics still adapt to the new data, as in a plain training loop); False trains every
    layer (full fine-tuning), the stronger change to the transferred weights.
    """
    if not isinstance(getattr(model, "head", None), nn.Linear):
        raise TypeError("transfer needs a classifier whose last layer is `model.head` (nn.Linear)")
    attacked = _copy(model)
    torch.manual_seed(seed)  # the new head's initialisation
    old = attacked.head
    attacked.head = nn.Linear(old.in_features, num_classes).to(old.weight.device)
    for p in attacked.parameters():
        p.requires_grad_(not freeze_features)
    attacked.head.requires_grad_(True)
    train_kw.setdefault("schedule", "constant")
    fit(attacked, x, y, TrainConfig(epochs=epochs, lr=lr, seed=seed, **train_kw),
        params=[p for p in attacked.parameters() if p.requires_grad])
    for p in attacked.parameters():
        p.requires_grad_(True)
    return attacked


def prune(model: nn.Module, amount: float, scope: str = "global") -> nn.Module:
    """Magnitude pruning of a copy with torch.nn.utils.prune, made permanent.

    `global`: the smallest AMOUNT of all attacked weights together are zeroed;
    `layer`: the smallest AMOUNT of each layer's weights.
    """
    if not 0 <= amount <= 1:
        raise ValueError(f"amount={amount} must be in [0, 1]")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope={scope!r} must be 'global' or 'layer'")
    # torch's pruning flattens weights with .view(-1), which fails on channels_last tensors (the
    # format wm.train leaves convolutions in): prune a plain-layout copy
    attacked = _copy(model).to(memory_format=torch.contiguous_format)
    targets = attacked_weights(attacked)
    if amount > 0:
        if scope == "global":
            tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=amount)
        else:
            for module, name in targets:
                tprune.l1_unstructured(module, name, amount=amount)
        for module, name in targets:
            tprune.remove(module, name)  # bake the mask into the weight: a plain model again
    return attacked


@torch.no_grad()
def quantize(model: nn.Module, bits: int) -> nn.Module:
    """Per-tensor min-max uniform quantization of a copy's weights to BITS bits (then dequantized).

    Each tensor's [min, max] is cut into 2**bits − 1 equal steps and every weight is rounded to
    the nearest level, so a tensor holds at most 2**bits distinct values afterwards.
    """
    if not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ValueError(f"bits={bits!r} must be an integer in 1..32")
    attacked = _copy(model)
    for module, name in attacked_weights(attacked):
        w = getattr(module, name)
        lo, hi = w.min(), w.max()
        scale = (hi - lo) / (2 ** bits - 1)
        if scale > 0:
            w.copy_(torch.round((w - lo) / scale) * scale + lo)
    return attacked


@torch.no_grad()
def weight_noise(model: nn.Module, k: float, seed: int = 0) -> nn.Module:
    """Add Gaussian noise of standard deviation K × (that layer's weight std) to a copy's weights."""
    if k < 0:
        raise ValueError(f"k={k} must be ≥ 0")
    attacked = _copy(model)
    g = torch.Generator().manual_seed(seed)
    for module, name in attacked_weights(attacked):
        w = getattr(module, name)
        noise = torch.randn(w.shape, generator=g).to(w.device, w.dtype)
        w.add_(noise * k * w.std())
    return attacked


def distill(teacher: nn.Module, student: nn.Module, x: torch.Tensor, epochs: float = 5,
            lr: float = 0.05, temperature: float = 4.0, mode: str = "soft", seed: int = 0,
            **train_kw) -> nn.Module:
    """Train a copy of a freshly initialised STUDENT on TEACHER's outputs for inputs X.

    `soft`: classifiers, the student matches the teacher's softmax at TEMPERATURE (Hinton et
    al.'s loss, scaled by T²); the attacker needs no labels. `mse` / `l1`: image-to-image
    models, the student regresses the teacher's output images (a surrogate model).
    """
    if mode not in ("soft", "mse", "l1"):
        raise ValueError(f"mode={mode!r} must be 'soft', 'mse' or 'l1'")
    targets = predict(teacher, x)
    if mode == "soft":
        targets = torch.softmax(targets / temperature, dim=1)
    pupil = copy.deepcopy(student)
    pupil.train()
    loss = {"soft": "soft_ce", "mse": "mse", "l1": "l1"}[mode]
    fit(pupil, x, targets, TrainConfig(epochs=epochs, lr=lr, seed=seed, loss=loss,
                                       temperature=temperature, **train_kw))
    return pupil


# ---------------------------------------------------------------------------------------------
# The registry: each attack with the method kinds it applies to, its default strengths, its axis
# ---------------------------------------------------------------------------------------------

CLASSIFIERS = ("classifier-white", "classifier-black")
EVERY_KIND = (*CLASSIFIERS, "image-service")


@dataclass(frozen=True)
class Attack:
    """A registered attack: RUN(model, strength, setup, kind) returns a new model (or, for an
    image service, a new model or its delivered outputs) and never changes MODEL. SETUP is a
    wm.methods.Setup: the attacker's data (`x_att`, `y_att`; `att` pairs) and the shared budget."""

    name: str
    kinds: tuple[str, ...]
    grid: tuple
    """Default strengths, weakest first."""
    axis: str
    """What the strength is, for figures and tables."""
    run: Callable[..., Any]


REGISTRY: dict[str, Attack] = {}


def register(name: str, kinds: tuple[str, ...], grid: tuple, axis: str):
    """Decorator: add the function as attack NAME (one line per attack, next to its code)."""
    def add(fn):
        if name in REGISTRY:
            raise ValueError(f"two attacks are named {name!r}")
        REGISTRY[name] = Attack(name, tuple(kinds), tuple(grid), axis, fn)
        return fn
    return add


def for_kind(kind: str) -> list[Attack]:
    """The registered attacks that apply to methods of KIND, in registration order."""
    return [a for a in REGISTRY.values() if kind in a.kinds]


@register("finetune", EVERY_KIND, grid=(1, 2), axis="epochs of fine-tuning")
def _finetune(model: nn.Module, epochs: float, setup, kind: str) -> nn.Module:
    """Classifiers: SGD at a constant 0.01 on the attacker's labelled images. Image service: the
    white-box thief fine-tunes the whole service with Adam (1e-4) and L1 on its clean pairs."""
    b, d = setup.budget, setup.data
    if kind == "image-service":
        return finetune(model, d["att"].a, d["att"].clean, epochs=epochs, lr=1e-4, fraction=1.0, seed=setup.seed,
                        loss="l1", optimizer="adam", weight_decay=0.0, batch_size=16, amp=False)
    return finetune(model, d["x_att"], d["y_att"], epochs=epochs, lr=0.01, fraction=1.0, seed=setup.seed,
                    batch_size=b["batch_size"])


@register("prune", EVERY_KIND, grid=(0.1, 0.3, 0.5, 0.7, 0.9), axis="fraction of weights pruned")
def _prune(model: nn.Module, amount: float, setup, kind: str) -> nn.Module:
    return prune(model, amount, scope="global")


@register("quantize", EVERY_KIND, grid=(8, 6, 4, 3, 2), axis="bits kept per weight")
def _quantize(model: nn.Module, bits: int, setup, kind: str) -> nn.Module:
    return quantize(model, bits)


@register("noise", EVERY_KIND, grid=(0.1, 0.25, 0.5, 1.0, 2.0), axis="noise std / layer weight std")
def _noise(model: nn.Module, k: float, setup, kind: str) -> nn.Module:
    return weight_noise(model, k, seed=setup.seed)


@register("distill", CLASSIFIERS, grid=(5,), axis="student epochs")
def _distill(model: nn.Module, epochs: float, setup, kind: str) -> nn.Module:
    """A fresh student of the same architecture on the teacher's soft labels for the attacker's
    unlabelled images."""
    torch.manual_seed(setup.seed + 11)  # the student's initialisation
    student = copy.deepcopy(model)
    for m in student.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return distill(model, student, setup.data["x_att"], epochs=epochs, lr=0.05, seed=setup.seed,
                   batch_size=setup.budget["batch_size"])


@register("surrogate", ("image-service",), grid=(6,), axis="surrogate epochs")
def _surrogate(model: nn.Module, epochs: float, setup, kind: str) -> nn.Module:
    """The black-box thief: a U-Net trained with L2 on (its inputs, the service's delivered outputs)."""
    from wm import image_processing as ip
    a = setup.data["att"].a
    targets = ip.deliver(ip.apply(model, a))
    net = ip.build_surrogate("unet", 16).to(a.device)
    ip.train_i2i(net, a, targets, "l2", epochs, 1e-3, 16, setup.seed + 100)
    return net.eval()
