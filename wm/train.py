"""The one training loop every study uses, and evaluation helpers.

Why it is fast, in the manner of airbench: the whole data set already sits on the training
device as one tensor, a batch is an index slice of a seeded permutation (no DataLoader, no
per-sample collation, no worker processes), bf16 autocast on CUDA, channels_last convolutions, and the
running loss is accumulated on the device so the hot loop never waits for the host.

Methods add their own terms through hooks (`Hook`): an extra loss on each batch (null
embedding's stamped samples, WaterMAS's sharpness term, a GAN's adversarial term), something
after backward (masking gradients of frozen weights) and something after the optimizer step
(writing watermark weights back). Given the same seed, a CPU run is bit-for-bit repeatable.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm  # the plain bar: tqdm.auto warns in notebooks without ipywidgets

from wm.progress import Progress

LOSSES = ("ce", "soft_ce", "mse", "l1")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "onecycle", "constant")


def seed_everything(seed: int) -> None:
    """One seed for Python's, NumPy's and torch's generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class TrainConfig:
    """Hyper-parameters of one call to `fit`."""

    epochs: float = 5
    """Passes over the data; a fraction trains on that fraction of one epoch's steps."""
    batch_size: int = 128
    """Samples per step."""
    optimizer: str = "sgd"
    """`sgd` (Nesterov momentum) or `adam`."""
    lr: float = 0.05
    """Peak learning rate."""
    momentum: float = 0.9
    """SGD momentum (Adam's beta1)."""
    weight_decay: float = 5e-4
    """L2 weight decay (decoupled for Adam: AdamW)."""
    schedule: str = "cosine"
    """`cosine` (linear warm-up then cosine decay to 0), `onecycle` or `constant`."""
    warmup: float = 0.1
    """Fraction of all steps spent warming up linearly (cosine schedule)."""
    loss: str = "ce"
    """`ce` (labels), `soft_ce` (soft targets, e.g. distillation), `mse` or `l1` (images)."""
    label_smoothing: float = 0.0
    """Label smoothing of the `ce` loss."""
    temperature: float = 1.0
    """Softmax temperature of the `soft_ce` loss (targets must be probabilities at that temperature)."""
    grad_clip: float | None = None
    """Clip the gradient norm to this value, if set."""
    seed: int = 0
    """Seeds the batch order and any randomness inside the model (dropout)."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on the CPU, where it would be slower)."""
    channels_last: bool = True
    """channels_last memory format for 4-D inputs, on CUDA and on the CPU (oneDNN's convolutions
    are faster in it: 1.4x for the small CNN at width 16-48 on 2 cores, measured)."""
    progress: bool = False
    """Show a tqdm bar over steps."""

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs > 0,
            "batch_size": isinstance(self.batch_size, int) and self.batch_size >= 1,
            "optimizer": self.optimizer in OPTIMIZERS,
            "lr": self.lr > 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "schedule": self.schedule in SCHEDULES,
            "warmup": 0 <= self.warmup < 1,
            "loss": self.loss in LOSSES,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "temperature": self.temperature > 0,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid "
                                 f"(choices: {dict(optimizer=OPTIMIZERS, schedule=SCHEDULES, loss=LOSSES).get(name, 'see the docstring')})")


class Hook:
    """Where a method plugs into `fit`; override what you need, the rest does nothing."""

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   out: torch.Tensor) -> torch.Tensor | None:
        """A term added to the task loss of this batch (called inside autocast)."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """After loss.backward(), before clipping and the optimizer step (e.g. mask gradients)."""

    def after_step(self, model: nn.Module) -> None:
        """After the optimizer step (e.g. write fixed weights back)."""


@dataclass
class History:
    """What one call to `fit` did: mean loss per epoch and throughput."""

    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")


def bf16_native(device: torch.device | str) -> bool:
    """Whether DEVICE computes bf16 convolutions natively: CUDA, or a CPU with AMX tiles (oneDNN's
    bf16 kernels). On other CPUs bf16 is emulated and slower than fp32, so the loops stay fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


class Precision:
    """The one precision policy: how a training loop runs its networks (not what it computes): bf16
    autocast if AMP and the
    device computes bf16 natively, and each network's memory format. channels_last speeds oneDNN's
    convolutions up (fp32: a stage-1 step 1.08x, a U-Net surrogate's 1.35x on 2 cores), but its
    bf16 GroupNorm is 9x slower in channels_last than in NCHW, more than the convolutions gain, so
    under bf16 a network with instance normalisation (R, D) stays NCHW. The losses are computed in
    fp32 on the networks' outputs; `apply` (evaluation) is fp32 whatever this says.

    Only stage 1 uses bf16 (cfg.amp): 1.4x a step on 2 AMX cores. Measured on the cpu profile
    (seed 0) with every image loop in bf16, the thief's plain-L1/L2 surrogates no longer learnt
    the hidden logo (stage-1 R's success rate on them 0.99 → 0.00), and the stage-2 R fitted to
    them then fired on clean outputs (0.77): the bf16 surrogates change the result, so M, the
    surrogates and stage 2 train in fp32."""

    def __init__(self, device: torch.device, amp: bool) -> None:
        self.device = device
        self.bf16 = bool(amp) and bf16_native(device)

    def autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def layout(self, net: nn.Module) -> torch.memory_format:
        """Put NET in its memory format and return it (inputs go `.contiguous(memory_format=...)`)."""
        if self.bf16 and any(isinstance(m, nn.GroupNorm) for m in net.modules()):
            net.to(memory_format=torch.contiguous_format)
            return torch.contiguous_format
        return channels_last(net)


def channels_last(net: nn.Module) -> torch.memory_format:
    """NET in channels_last (the fp32 loops' format: see `Precision`); returns the format."""
    net.to(memory_format=torch.channels_last)
    return torch.channels_last


def autocast(device: torch.device, enabled: bool = True):
    """The classifiers' precision: bf16 autocast on CUDA, fp32 on every CPU (bf16 on AMX CPUs would
    change the classifiers' numbers, which were measured in fp32)."""
    return Precision(device, enabled and device.type == "cuda").autocast()


def task_loss(out: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    if cfg.loss == "ce":
        return F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
    if cfg.loss == "soft_ce":  # Hinton et al.: T² keeps gradient scale independent of T
        return F.cross_entropy(out.float() / cfg.temperature, y) * cfg.temperature ** 2
    if cfg.loss == "mse":
        return F.mse_loss(out.float(), y)
    return F.l1_loss(out.float(), y)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, total_steps: int, cfg: TrainConfig):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    warm = max(1, int(cfg.warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def n_steps(n: int, batch_size: int, epochs: float, drop_last: bool = False) -> int:
    """Steps of EPOCHS passes over N samples (a fraction: that share of one pass's steps)."""
    per_epoch = max(1, n // batch_size if drop_last else math.ceil(n / batch_size))
    return max(1, round(epochs * per_epoch))


def index_batches(n: int, batch_size: int, epochs: float, seed: int, device: torch.device | str,
                  drop_last: bool = False, desc: str = "training"):
    """The one batching loop: yields (epoch, indices) for EPOCHS passes over N samples, each pass a
    fresh permutation from a generator seeded with SEED (on the CPU: the same order on every
    device). DROP_LAST keeps full batches only (the image study's consistency term pairs the two
    halves of a batch). Reports live progress (wm.progress) as it goes."""
    per_epoch = max(1, n // batch_size if drop_last else math.ceil(n / batch_size))
    total = n_steps(n, batch_size, epochs, drop_last)
    order = torch.Generator().manual_seed(seed)
    live = Progress(desc, total, epochs)
    step = 0
    while step < total:
        perm = torch.randperm(n, generator=order).to(device, non_blocking=True)
        for i in range(per_epoch):
            if step == total:
                return
            yield step // per_epoch, perm[i * batch_size:(i + 1) * batch_size]
            step += 1
            live.update(step, (step - 1) // per_epoch)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig | None = None,
        hooks: tuple[Hook, ...] | list[Hook] = (), params=None) -> History:
    """Train MODEL in place on (X, Y) with CFG; X and Y are moved once to the model's device.

    `params` restricts the optimizer to some parameters (default: all that require grad).
    """
    cfg = cfg or TrainConfig()
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"fit needs a non-empty training set with one label per sample "
                         f"(got {len(x)} samples and {len(y)} labels)")
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    cuda = device.type == "cuda"
    if cfg.channels_last and x.dim() == 4:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    total = n_steps(len(x), cfg.batch_size, cfg.epochs)
    opt = make_optimizer(params if params is not None else model.parameters(), cfg)
    sched = make_schedule(opt, total, cfg)
    torch.manual_seed(cfg.seed)  # dropout and anything random inside the model

    history = History()
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=total, disable=not cfg.progress, leave=False, desc="train")
    sums = []  # per epoch: the summed loss, kept on the device (no sync per step), and the steps
    for epoch, idx in index_batches(len(x), cfg.batch_size, cfg.epochs, cfg.seed, device,
                                    desc=f"training {type(model).__name__}"):
        xb, yb = x[idx], y[idx]
        with autocast(device, cfg.amp):
            out = model(xb)
            loss = task_loss(out, yb, cfg)
            for h in hooks:
                extra = h.extra_loss(model, xb, yb, out)
                if extra is not None:
                    loss = loss + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for h in hooks:
            h.after_backward(model)
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        for h in hooks:
            h.after_step(model)
        if epoch == len(sums):
            sums.append([torch.zeros((), device=device), 0])
        sums[epoch][0] += loss.detach().float()
        sums[epoch][1] += 1
        history.samples += len(idx)
        bar.update()
    history.loss = [(total_ / steps).item() for total_, steps in sums]  # one sync per epoch, at the end
    bar.close()
    if cuda:
        torch.cuda.synchronize()
    history.seconds = time.perf_counter() - start
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024, amp: bool = True) -> torch.Tensor:
    """Outputs of MODEL on X in eval mode, in float32, on X's device (train mode restored after)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for i in range(0, len(x), batch_size):
        with autocast(device, amp):
            outs.append(model(x[i:i + batch_size].to(device)).float())
    model.train(was_training)
    return torch.cat(outs).to(x.device)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of a classifier on (X, Y)."""
    pred = predict(model, x, batch_size).argmax(1)
    return (pred == y.to(pred.device)).float().mean().item()
