"""WaterMAS (De Sousa Trias, Mitrea, Fiandrotti, Cagnazzo, Chaudhuri, Tartaglione, ICPR 2024),
reconstructed, with the baselines it is compared against.

**What this is.** The paper's full text and code were not available (see
../shared/papers/paper3-watermas.md). This module is a *reconstruction*, and everything in it that
goes past the abstract is this module's own choice:

* From the abstract: a substitutive, white-box watermark; the secret key is the set of positions of
  the weights that carry it, drawn at random across several layers; the watermarked weights are
  kept unchanged during training while the gradient space around them is sharpened, so that moving
  them (to erase the bits) costs accuracy.
* Reconstructed here: one weight per bit with the value rule w_k = (2·b_k − 1)·κ·σ_ℓ (σ_ℓ the std
  of the host layer's weights when the key is drawn); extraction by sign; the SAM-style objective
  of `SharpnessHook`, min over the free weights of (1 + λ)·L(θ) − λ·L(θ + ε_K) with ε_K the SAM
  direction restricted to the keyed weights, with its ρ, λ and cap; the BatchNorm and dropout
  handling of the extra pass. The ancestor method (Tartaglione et al., ICPR 2020, "TART") and Uchida et al. 2017
  are implemented as baselines from their public code and papers.

The pieces, top to bottom:

1. `Key`, `draw_key`, `embed_values`, `extract`, `ber`: the secret and the bits it carries.
2. `FreezeHook`: keeps the keyed weights bit-identical through training (gradient masking and
   writing the values back after every optimizer step, since weight decay and momentum would
   otherwise move them: the notes' pitfalls 1-2).
3. `SharpnessHook` (WaterMAS) and `TartHook` (random replicas): one or more extra forward/backward
   passes per step with only the keyed weights perturbed.
4. `sharpness`: the loss increase when only the keyed weights move (the measured effect).
5. `UchidaKey`, `UchidaHook`: the projection-regulariser baseline.
6. `Config`, `build_model`, `make_hooks`, `train`: what the notebook calls.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wm import metrics
from wm import models as wm_models
from wm.attacks import attacked_weights
from wm.config import (FASHION_TEST, FASHION_TRAIN, MAX_BATCH, MAX_EPOCHS, MAX_SEED, MAX_SEEDS, MAX_WIDTH,
                       StudyConfig, param, require)
from wm.train import History, Hook, TrainConfig, autocast, fit, seed_everything

METHODS = ("none", "freeze_only", "watermas", "tart", "uchida")
"""`none` (clean control), `freeze_only` (substitution without sharpening, λ = 0), `watermas`,
`tart` (ICPR 2020 random replicas) and `uchida` (projection regulariser)."""
MODELS = ("smallcnn", "resnet18", "vgg16", "mobilenet_v3_small", "swin_t")
KEY_FORMAT = "wm.watermas.Key/1"


def _subseed(seed: int, tag: str) -> int:
    """An independent 63-bit seed per purpose (positions, bits, ...), derived with SHA-256."""
    return int.from_bytes(hashlib.sha256(f"watermas|{tag}|{seed}".encode()).digest()[:8], "big") >> 1


# ---------------------------------------------------------------------------------------------
# 1. The key
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """The secret: for bit k, the parameter `names[k]`, the flat index `indices[k]` in that tensor
    (row-major over its logical shape, whatever its memory format), the bit and the float32 value
    written there. Lives apart from the model (`save`/`load`)."""

    names: tuple[str, ...]
    indices: tuple[int, ...]
    bits: tuple[int, ...]
    values: tuple[float, ...]
    seed: int | None = None
    """The seed the key was drawn with (None for a key built by hand)."""
    kappa: float = 1.0
    """κ of the value rule the key was drawn with."""

    def __post_init__(self) -> None:
        n = len(self.names)
        if not (len(self.indices) == len(self.bits) == len(self.values) == n) or n == 0:
            raise ValueError("a Key needs as many names, indices, bits and values, at least one")
        if any(b not in (0, 1) for b in self.bits):
            raise ValueError("Key.bits must be 0 or 1")
        if len(set(zip(self.names, self.indices))) != n:
            raise ValueError("Key positions must be distinct")

    def __len__(self) -> int:
        return len(self.names)

    def bit_tensor(self) -> torch.Tensor:
        return torch.tensor(self.bits, dtype=torch.long)

    def layers(self) -> tuple[str, ...]:
        """The distinct parameters the key writes into, in first-use order."""
        return tuple(dict.fromkeys(self.names))

    def save(self, path: str | Path) -> None:
        """JSON; values as float.hex of their float32 value, so `load` restores them bit for bit."""
        doc = {"format": KEY_FORMAT, "seed": self.seed, "kappa": self.kappa, "names": list(self.names),
               "indices": list(self.indices), "bits": list(self.bits),
               "values": [float(v).hex() for v in self.values]}
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:  # temp file + rename: a killed run never leaves half a key
            json.dump(doc, f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "Key":
        doc = json.loads(Path(path).read_text())
        if doc.get("format") != KEY_FORMAT:
            raise ValueError(f"{path} is not a {KEY_FORMAT} file")
        return cls(tuple(doc["names"]), tuple(doc["indices"]), tuple(doc["bits"]),
                   tuple(float.fromhex(v) for v in doc["values"]), doc["seed"], doc["kappa"])


def eligible_weights(model: nn.Module, layers=None) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of the tensors a key may use: the `.weight` of every convolution and linear
    layer (`wm.attacks.attacked_weights`, the tensors the attacks touch), never biases or
    normalisation parameters, whose bits would survive the attacks trivially (pitfall 3).
    LAYERS restricts them to the given parameter or module names."""
    module_names = {id(m): name for name, m in model.named_modules()}
    out = []
    for module, attr in attacked_weights(model):
        mname = module_names[id(module)]
        pname = f"{mname}.{attr}" if mname else attr
        if layers is None or pname in layers or mname in layers:
            out.append((pname, getattr(module, attr)))
    if layers is not None:
        found = {n for n, _ in out} | {n.rsplit(".", 1)[0] for n, _ in out}
        unknown = [name for name in layers if name not in found]
        if unknown:
            raise ValueError(f"layers {unknown} are not convolution/linear weights of this model")
    return out


@torch.no_grad()
def draw_key(model: nn.Module, n_bits: int, seed: int, kappa: float = 1.0, layers=None,
             bits=None) -> Key:
    """Draw N_BITS positions uniformly without replacement over the union of eligible weights
    (so they spread over layers in proportion to their sizes), the bits (unless BITS is given)
    and their values w_k = (2·b_k − 1)·κ·σ_ℓ, σ_ℓ the std of the host layer's weights now.

    Call it on the freshly initialised model: σ_ℓ is then the init scale, which is what training
    keeps the layer near. Positions and bits depend only on (architecture, seed, n_bits); the
    values also on the model's initial weights (deterministic after `seed_everything`).
    """
    if not (isinstance(n_bits, int) and n_bits >= 1):
        raise ValueError(f"n_bits={n_bits!r} must be an integer ≥ 1")
    if not kappa > 0:
        raise ValueError(f"kappa={kappa!r} must be > 0 (the sign carries the bit)")
    weights = eligible_weights(model, layers)
    sizes = [w.numel() for _, w in weights]
    total = sum(sizes)
    if n_bits > total:
        raise ValueError(f"n_bits={n_bits} exceeds the {total} eligible weights")
    g = torch.Generator().manual_seed(_subseed(seed, "positions"))
    if 4 * n_bits > total:  # dense: a permutation is cheap enough
        chosen = torch.randperm(total, generator=g)[:n_bits].tolist()
    else:  # sparse: rejection sampling avoids a permutation of tens of millions of indices
        chosen, seen = [], set()
        while len(chosen) < n_bits:
            for c in torch.randint(total, (2 * (n_bits - len(chosen)) + 16,), generator=g).tolist():
                if c not in seen:
                    seen.add(c)
                    chosen.append(c)
                    if len(chosen) == n_bits:
                        break
    chosen.sort()  # canonical order: layer by layer, index by index
    if bits is None:
        gb = torch.Generator().manual_seed(_subseed(seed, "bits"))
        bits = torch.randint(0, 2, (n_bits,), generator=gb).tolist()
    else:
        bits = [int(b) for b in (bits.tolist() if isinstance(bits, torch.Tensor) else bits)]
        if len(bits) != n_bits:
            raise ValueError(f"{len(bits)} bits given for n_bits={n_bits}")
    starts = [0]
    for s in sizes:
        starts.append(starts[-1] + s)
    sigmas = [w.detach().float().std() for _, w in weights]  # float32, unbiased like wm.attacks
    names, indices, values = [], [], []
    for c, b in zip(chosen, bits):
        layer = bisect_right(starts, c) - 1
        names.append(weights[layer][0])
        indices.append(c - starts[layer])
        # the product in float32: the value the model holds is exactly the value the key stores
        values.append(float((2 * b - 1) * kappa * sigmas[layer]))
    return Key(tuple(names), tuple(indices), tuple(bits), tuple(values), seed, float(kappa))


class _Slots:
    """A key resolved on one model: per host parameter, its index tensors (on the parameter's
    device, built once) and values. Everything the hooks do per step is then one indexed kernel
    per host layer: no Python loop over bits and no host sync in the training loop.

    "Group order" = the keyed weights concatenated layer by layer; `order` maps it to key order.
    """

    def __init__(self, model: nn.Module, key: Key):
        params = dict(model.named_parameters())
        missing = sorted(set(key.names) - set(params))
        if missing:
            raise KeyError(f"the key names parameters this model does not have: {missing[:3]}")
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(key.names):
            groups.setdefault(name, []).append(i)
        self.model = model
        self.params, self.coords, self.values, self.bounds, order = [], [], [], [], []
        start = 0
        for name, pos in groups.items():
            p = params[name]
            flat = torch.tensor([key.indices[i] for i in pos], dtype=torch.long)
            if int(flat.max()) >= p.numel():
                raise ValueError(f"key index {int(flat.max())} out of range for {name} ({p.numel()} weights)")
            # multi-dimensional coordinates: correct for channels_last tensors too, where a
            # flat view of the storage would not be the logical order
            self.coords.append(tuple(c.to(p.device) for c in torch.unravel_index(flat, p.shape)))
            self.params.append(p)
            self.values.append(torch.tensor([key.values[i] for i in pos], dtype=torch.float32).to(p.device, p.dtype))
            self.bounds.append((start, start + len(pos)))
            start += len(pos)
            order += pos
        self.order = torch.tensor(order, dtype=torch.long)
        self.value_vector = torch.cat(self.values)
        self.device = self.params[0].device

    def read(self) -> torch.Tensor:
        """The keyed weights, in group order (a copy)."""
        return torch.cat([p.detach()[c] for p, c in zip(self.params, self.coords)])

    def read_grad(self) -> torch.Tensor:
        return torch.cat([p.grad[c] if p.grad is not None else torch.zeros(len(c[0]), device=p.device, dtype=p.dtype)
                          for p, c in zip(self.params, self.coords)])

    @torch.no_grad()
    def write(self, vec: torch.Tensor) -> None:
        """Overwrite the keyed weights with VEC (group order)."""
        for p, c, (a, b) in zip(self.params, self.coords, self.bounds):
            p.index_put_(c, vec[a:b].to(p.dtype))

    @torch.no_grad()
    def write_values(self) -> None:
        for p, c, v in zip(self.params, self.coords, self.values):
            p.index_put_(c, v)

    @torch.no_grad()
    def zero_grads(self) -> None:
        for p, c in zip(self.params, self.coords):
            if p.grad is not None:
                p.grad[c] = 0


def embed_values(model: nn.Module, key: Key) -> None:
    """Write the key's values into MODEL in place (the substitution)."""
    _Slots(model, key).write_values()


@torch.no_grad()
def extract(model: nn.Module, key: Key) -> torch.Tensor:
    """The bits MODEL carries at the key's positions, by sign (w > 0 → 1; a zero, e.g. a pruned
    weight, reads as 0), in key order, as a CPU long tensor."""
    slots = _Slots(model, key)
    bits = torch.empty(len(key), dtype=torch.long)
    bits[slots.order] = (slots.read() > 0).long().cpu()
    return bits


def ber(model: nn.Module, key: Key) -> float:
    """Fraction of the key's bits that MODEL gets wrong (0.5 = no information)."""
    return metrics.ber(extract(model, key), key.bit_tensor())


OVERWRITE_MODES = ("flip", "zero", "random")


@torch.no_grad()
def overwrite(model: nn.Module, key: Key, mode: str, seed: int = 0) -> nn.Module:
    """The key-aware attack (the abstract's "attacker would intercept the key"): a copy of MODEL
    whose keyed weights are overwritten: `flip` negates them (every bit inverted), `zero` sets
    them to 0 (every bit reads 0), `random` redraws them from N(0, σ) with σ = the magnitude of
    the key's value there (κ·σ_ℓ), i.e. fresh weights of the same scale (BER about 0.5)."""
    if mode not in OVERWRITE_MODES:
        raise ValueError(f"mode={mode!r} must be one of {', '.join(OVERWRITE_MODES)}")
    attacked = copy.deepcopy(model).eval()
    slots = _Slots(attacked, key)
    current = slots.read()
    if mode == "flip":
        new = -current
    elif mode == "zero":
        new = torch.zeros_like(current)
    else:
        g = torch.Generator().manual_seed(_subseed(seed, "overwrite"))
        new = (torch.randn(len(current), generator=g) * slots.value_vector.abs().cpu()).to(current)
    slots.write(new)
    return attacked


# ---------------------------------------------------------------------------------------------
# 2. Keeping the keyed weights fixed
# ---------------------------------------------------------------------------------------------


class FreezeHook(Hook):
    """Keyed weights bit-identical through training: their gradients are zeroed after backward
    (so they count neither in gradient clipping nor in the optimizer's update), and the key's
    values are written back after every optimizer step, because SGD's weight decay and momentum
    (and AdamW's decoupled decay) move a weight even with a zero gradient (pitfalls 1-2).
    Alone it is the `freeze_only` baseline (λ = 0)."""

    def __init__(self, key: Key):
        self.key = key
        self._slots: _Slots | None = None

    def slots(self, model: nn.Module) -> _Slots:
        if self._slots is None or self._slots.model is not model:
            self._slots = _Slots(model, self.key)
        return self._slots

    def after_backward(self, model):
        self.slots(model).zero_grads()

    def after_step(self, model):
        self.slots(model).write_values()


# ---------------------------------------------------------------------------------------------
# 3. Sharpening: WaterMAS and TART
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _bn_statistics_kept(model: nn.Module):
    """BatchNorm keeps its training mode (batch statistics, as in the main pass) but its running
    estimates and counters are restored afterwards: the extra passes must not update them a
    second time with perturbed activations. (Eval-mode BN instead would compute L(θ+ε) with
    running statistics while L(θ) used batch ones: a train/eval gap of order 1 would swamp the
    O(ρ) effect of the perturbation.)"""
    bufs = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    saved = [b.clone() for b in bufs]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(bufs, saved):
                b.copy_(s)


def _rng_state(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class _PerturbedPasses(FreezeHook):
    """What WaterMAS and TART share: remember the batch and L(θ) in `extra_loss`; in
    `after_backward`, run the same batch again with only the keyed weights moved, combine the
    gradients, restore the keyed weights exactly, then freeze (zero the keyed gradients).

    The freeze is built in: these hooks read the keyed gradients of the main pass, so a
    FreezeHook placed *before* them would zero g_K first; do not add one.

    Dropout and stochastic depth (vgg16, mobilenet, swin_t): the extra passes replay the random
    state saved after the previous optimizer step, so they draw the same masks as the main pass
    and the gradient difference measures the perturbation, not mask noise (the first step of a
    `fit`, before any state was saved, cannot be replayed). The global random stream is restored
    afterwards, so training draws exactly what it would without the extra passes.
    """

    def __init__(self, key: Key, lam: float, cap: float | None, label_smoothing: float, amp: bool):
        super().__init__(key)
        if lam < 0:
            raise ValueError(f"lam={lam} must be ≥ 0")
        if cap is not None and not cap > 0:
            raise ValueError(f"cap={cap} must be > 0 or None")
        self.lam, self.cap, self.label_smoothing, self.amp = lam, cap, label_smoothing, amp
        self._batch = None
        self._rng = None
        self.reset_stats()

    def reset_stats(self) -> None:
        self._gap_sum = self._skipped = None
        self._steps = 0

    def stats(self) -> dict:
        """Mean loss increase of the extra passes over L(θ) during training (S_K for WaterMAS),
        steps and how many steps the cap skipped (one host sync: call it after training)."""
        if not self._steps:
            return {"mean_gap": float("nan"), "steps": 0, "skipped": 0}
        return {"mean_gap": float(self._gap_sum) / self._steps, "steps": self._steps, "skipped": int(self._skipped)}

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.float(), y, label_smoothing=self.label_smoothing)

    def extra_loss(self, model, x, y, out):
        self._batch = (x, y)
        self._base = self._loss(out.detach(), y)  # L(θ) of this batch, no graph
        return None

    def after_step(self, model):
        super().after_step(model)
        # the random state the next main forward pass will start from (fit draws its batch
        # order from its own generator, so nothing consumes the global one in between)
        self._rng = _rng_state(self.slots(model).device)

    def _extra_passes(self, model: nn.Module, slots: _Slots, deltas: list[torch.Tensor]) -> torch.Tensor:
        """For each delta: keyed weights ← saved + delta, forward and backward the stored batch
        (gradients accumulate in .grad). Restores the keyed weights to the saved tensor, not by
        subtraction (exact). Returns the mean loss of the passes (a device scalar)."""
        x, y = self._batch
        saved = slots.read()
        now = _rng_state(slots.device)
        total = torch.zeros((), device=slots.device)
        try:
            with _bn_statistics_kept(model):
                for delta in deltas:
                    slots.write(saved + delta)
                    if self._rng is not None:
                        _set_rng_state(self._rng, slots.device)
                    with autocast(slots.device, self.amp):
                        loss = self._loss(model(x), y)
                    loss.backward()
                    total += loss.detach()
        finally:
            slots.write(saved)
            _set_rng_state(now, slots.device)
        return total / len(deltas)

    def _weight(self, gap: torch.Tensor) -> torch.Tensor | float:
        """λ, or λ·[gap ≤ cap] as a device scalar (no host sync), and the running statistics."""
        self._steps += 1
        self._gap_sum = gap if self._gap_sum is None else self._gap_sum + gap
        if self.cap is None:
            self._skipped = torch.zeros(()) if self._skipped is None else self._skipped
            return self.lam
        over = gap > self.cap
        self._skipped = over.long() if self._skipped is None else self._skipped + over.long()
        return self.lam * (~over).float()

    def _run(self, model: nn.Module, deltas: list[torch.Tensor]):
        """Stash the main gradients, run the extra passes into fresh .grad, return both lists
        (of the parameters that have a gradient) and the gap L_extra − L(θ)."""
        slots = self.slots(model)
        params = [p for p in model.parameters() if p.grad is not None]
        main = [p.grad for p in params]
        for p in params:
            p.grad = None
        gap = self._extra_passes(model, slots, deltas) - self._base
        reached, kept, extra = [], [], []
        for p, g in zip(params, main):
            if p.grad is None:  # only another hook's extra loss reaches it: keep its gradient as is
                p.grad = g
            else:
                reached.append(p)
                kept.append(g)
                extra.append(p.grad)
        return reached, kept, extra, gap


class SharpnessHook(_PerturbedPasses):
    """WaterMAS as reconstructed here: sharpen the loss around the keyed weights θ_K while they
    stay fixed, by training the free weights θ_F on

        g_K   = ∇_{θ_K} L(θ)                       (the keyed coordinates of the main gradient)
        ε_K   = ρ · g_K / ‖g_K‖                     (SAM's first-order worst case, zero off K)
        S_K(θ) = L(θ_K + ε_K, θ_F) − L(θ)           (sharpness seen from the watermark)
        min over θ_F:  L(θ) − λ·S_K(θ)  =  (1 + λ)·L(θ) − λ·L(θ + ε_K)

    first order like SAM: ε_K is a constant, so the free weights get
    (1 + λ)·g − λ·g_pert = g + λ·(g − g_pert) with g_pert = ∇_F L(θ + ε_K): two forward/backward
    passes per step. θ_K's own gradient is zeroed and its values re-imposed (built-in freeze).

    The maximisation is unbounded (pitfall 10): the network can make the loss explode along ε_K
    (measured: λ = 10 uncapped took a small CNN from 81% to 29% accuracy in 100 steps). Hence
    CAP (`max_sharpness`): on a step where S_K already exceeds CAP, the −λ·S_K term is dropped
    and the step is a plain one; and λ the smallest value with a visible effect (Config.lam). The loss is the task's
    cross-entropy (LABEL_SMOOTHING as in training); other hooks' extra losses are not repeated.
    """

    def __init__(self, key: Key, rho: float = 0.05, lam: float = 5.0, max_sharpness: float | None = 0.05,
                 label_smoothing: float = 0.0, amp: bool = True):
        super().__init__(key, lam, max_sharpness, label_smoothing, amp)
        if not rho > 0:
            raise ValueError(f"rho={rho} must be > 0")
        self.rho = rho

    def after_backward(self, model):
        if self.lam == 0:  # nothing to sharpen: freeze-only
            return super().after_backward(model)
        slots = self.slots(model)
        g_k = slots.read_grad().float()
        eps = self.rho * g_k / (g_k.norm() + 1e-12)
        params, main, pert, gap = self._run(model, [eps])
        w = self._weight(gap)
        # g + w·(g − g_pert), computed in the g_pert buffers: g_pert ← (g_pert − g)·(−w) + g.
        # The _foreach kernels (as in torch's optimizers) do it in a few launches, not 3 per tensor.
        torch._foreach_sub_(pert, main)
        torch._foreach_mul_(pert, -w)
        torch._foreach_add_(pert, main)
        for p, g in zip(params, pert):
            p.grad = g
        slots.zero_grads()  # the freeze: keyed weights never move


class TartHook(_PerturbedPasses):
    """The ICPR 2020 ancestor (Tartaglione et al., "Delving in the loss landscape…"), written as
    its flow chart states the objective rather than as its replica-optimizer code (pitfall 9):

        min over θ_F:  L(Γ_0) − (λ/R)·Σ_r L(Γ_r),   Γ_r = θ with Gaussian noise on θ_K only

    so the free weights get g − (λ/R)·Σ_r ∇_F L(Γ_r): 1 + R forward/backward passes per step.
    Noise scale: per keyed weight, std = NOISE × |w_k| = NOISE·κ·σ_ℓ, i.e. relative to the host
    layer's scale like the attacks' noise grid (pitfall 6), not the ancestor's absolute 0.01
    (which was set for watermark values of ±1 to ±10). The noise comes from the hook's own seeded
    generator, never the global one. CAP (optional) drops the replica term on a step where the
    mean replica loss already exceeds L(Γ_0) + CAP, as for WaterMAS.
    """

    def __init__(self, key: Key, replicas: int = 2, noise: float = 1.0, lam: float = 0.5,
                 max_gap: float | None = None, label_smoothing: float = 0.0, amp: bool = True, seed: int = 0):
        super().__init__(key, lam, max_gap, label_smoothing, amp)
        if not (isinstance(replicas, int) and replicas >= 1):
            raise ValueError(f"replicas={replicas!r} must be an integer ≥ 1")
        if not noise > 0:
            raise ValueError(f"noise={noise} must be > 0")
        if lam >= 1:
            raise ValueError(f"lam={lam} must be < 1: the task loss's own weight is 1 − λ")
        self.replicas, self.noise, self.seed = replicas, noise, seed
        self._gen = None

    def after_backward(self, model):
        if self.lam == 0:
            return super().after_backward(model)
        slots = self.slots(model)
        if self._gen is None:
            self._gen = torch.Generator(slots.device).manual_seed(_subseed(self.seed, "tart-noise"))
        std = self.noise * slots.value_vector.abs().float()
        deltas = [torch.randn(std.shape, generator=self._gen, device=slots.device) * std for _ in range(self.replicas)]
        params, main, summed, gap = self._run(model, deltas)  # .grad accumulated Σ_r g_r
        w = self._weight(gap)
        torch._foreach_mul_(summed, -w / self.replicas)
        torch._foreach_add_(summed, main)  # g − (λ/R)·Σ_r g_r
        for p, g in zip(params, summed):
            p.grad = g
        slots.zero_grads()


# ---------------------------------------------------------------------------------------------
# 4. Measuring the sharpness around the keyed weights
# ---------------------------------------------------------------------------------------------


def _mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    total = torch.zeros((), device=x.device)
    for i in range(0, len(x), batch_size):
        total += F.cross_entropy(model(x[i:i + batch_size]).float(), y[i:i + batch_size], reduction="sum")
    return total / len(x)


def sharpness(model: nn.Module, key: Key, x: torch.Tensor, y: torch.Tensor, rho: float = 0.05,
              n_random: int = 8, seed: int = 0, batch_size: int = 1024) -> dict:
    """Loss increase on (X, Y) when only the keyed weights are perturbed by a vector of norm RHO:
    `sam` along the first-order worst direction ρ·g_K/‖g_K‖ (g_K from the whole of X), `random`
    the mean over N_RANDOM isotropic directions restricted to the keyed coordinates, and
    `base_loss` = L(θ). Eval mode (running BatchNorm statistics, no dropout), float32 (bf16
    would round away differences this small); the model is left exactly as it was."""
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    was_training = model.training
    model.eval()
    slots = _Slots(model, key)
    saved = slots.read()
    try:
        with torch.no_grad():
            base = _mean_loss(model, x, y, batch_size)
        grads = [torch.zeros_like(p) for p in slots.params]
        for i in range(0, len(x), batch_size):
            loss = F.cross_entropy(model(x[i:i + batch_size]).float(), y[i:i + batch_size], reduction="sum") / len(x)
            for acc, g in zip(grads, torch.autograd.grad(loss, slots.params)):
                acc += g
        g_k = torch.cat([g[c] for g, c in zip(grads, slots.coords)]).float()
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            slots.write(saved + rho * g_k / (g_k.norm() + 1e-12))
            sam = _mean_loss(model, x, y, batch_size) - base
            rand = []
            for _ in range(n_random):
                d = torch.randn(len(saved), generator=gen).to(device)
                slots.write(saved + rho * d / d.norm())
                rand.append(_mean_loss(model, x, y, batch_size) - base)
    finally:
        slots.write(saved)
        model.train(was_training)
    random = torch.stack(rand).mean().item() if rand else float("nan")
    return {"sam": sam.item(), "random": random, "base_loss": base.item()}


# ---------------------------------------------------------------------------------------------
# 5. Uchida et al. 2017: the projection regulariser
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class UchidaKey:
    """Uchida et al.'s secret: the host layer, the projection X (T×M, from a seeded N(0, 1)) and
    the T bits. The host vector is w = the layer's kernel averaged over output channels,
    flattened (M = C_in·k·k for a convolution, in_features for a linear layer)."""

    layer: str
    X: torch.Tensor
    bits: tuple[int, ...]
    seed: int | None = None

    def bit_tensor(self) -> torch.Tensor:
        return torch.tensor(self.bits, dtype=torch.long)


def default_uchida_layer(model: nn.Module, n_bits: int = 1) -> str:
    """Uchida et al. mark one convolution: the second one of the model, skipping those whose host
    vector is shorter than N_BITS (M < T cannot hold T independent bits: MobileNet's depthwise
    3×3 kernels have M = 9). Without such a convolution (swin_t has one conv, its patch stem),
    the first linear weight after the first layer that is long enough."""
    weights = eligible_weights(model)
    convs = [(n, w) for n, w in weights if w.dim() == 4]
    for pool in (convs[1:], weights[1:]):
        fit_ = [n for n, w in pool if w[0].numel() >= n_bits]
        if fit_:
            return fit_[0]
    raise ValueError(f"no weight layer after the first has {n_bits} inputs per output: pass layer=")


def draw_uchida_key(model: nn.Module, n_bits: int, seed: int, layer: str | None = None, bits=None) -> UchidaKey:
    layer = layer or default_uchida_layer(model, n_bits)
    params = dict(model.named_parameters())
    if layer not in params or params[layer].dim() < 2:
        raise ValueError(f"layer={layer!r} is not a weight of this model")
    m = params[layer][0].numel()
    g = torch.Generator().manual_seed(_subseed(seed, "uchida"))
    X = torch.randn(n_bits, m, generator=g)
    if bits is None:
        bits = torch.randint(0, 2, (n_bits,), generator=g).tolist()
    return UchidaKey(layer, X, tuple(int(b) for b in bits), seed)


def _uchida_logits(model: nn.Module, ukey: UchidaKey, X: torch.Tensor | None = None) -> torch.Tensor:
    W = dict(model.named_parameters())[ukey.layer]
    w = W.float().mean(0).flatten()  # average over output channels
    return (ukey.X.to(w.device) if X is None else X) @ w


class UchidaHook(Hook):
    """Adds λ_U·BCE(sigmoid(X·w), b) to the task loss, summed over the T bits as in Uchida et
    al.'s E_R (they used λ = 0.01 over long trainings; see Config.uchida_lam). Computed in float32
    outside autocast, since bf16 would round the projection of a 1e-2-scale mean kernel."""

    def __init__(self, ukey: UchidaKey, lam: float = 0.1):
        self.ukey, self.lam = ukey, lam
        self._X = self._b = None

    def extra_loss(self, model, x, y, out):
        if self._X is None or self._X.device != x.device:  # moved to the device once
            self._X = self.ukey.X.to(x.device)
            self._b = self.ukey.bit_tensor().float().to(x.device)
        with torch.autocast(x.device.type, enabled=False):
            logits = _uchida_logits(model, self.ukey, self._X)
            return self.lam * F.binary_cross_entropy_with_logits(logits, self._b, reduction="sum")


@torch.no_grad()
def uchida_extract(model: nn.Module, ukey: UchidaKey) -> torch.Tensor:
    """b̂ = 1[X·w > 0], a CPU long tensor."""
    return (_uchida_logits(model, ukey) > 0).long().cpu()


def uchida_ber(model: nn.Module, ukey: UchidaKey) -> float:
    return metrics.ber(uchida_extract(model, ukey), ukey.bit_tensor())


# ---------------------------------------------------------------------------------------------
# 6. The notebook's parameters, models and training
# ---------------------------------------------------------------------------------------------


@dataclass
class Config(StudyConfig):
    """Parameters of the WaterMAS notebook. Fashion-MNIST (1×28×28, 10 classes) throughout."""

    profile: str = "cpu"
    """smoke, cpu or gpu (resolved from auto)."""
    seed: int = param(0, ge=0, le=MAX_SEED)
    """First seed (model init, key, batch order); seeds seed, seed+1, … when seeds > 1."""
    seeds: int = param(1, ge=1, le=MAX_SEEDS)
    """Seeds per (model, method)."""
    models: tuple = param(("smallcnn", "resnet18"), choices=MODELS)
    """Architectures (`MODELS`); the paper used VGG16, ResNet18, MobileNetV3 and Swin-T on CIFAR-10. Must
    include smallcnn, on which experiments 2-6 run."""
    width: int = param(16, ge=1, le=MAX_WIDTH)
    """Width of the small CNN."""
    n_train: int = param(30000, ge=1, le=FASHION_TRAIN)
    """Training images drawn from Fashion-MNIST's 60 000 (the small CNN trains on all of them)."""
    n_test: int = param(2000, ge=1, le=FASHION_TEST)
    """Held-out test images for accuracy (and the sharpness measurement's pool)."""
    epochs: float = param(3, gt=0, le=MAX_EPOCHS)
    """Training epochs of the small CNN, from scratch with the watermark present from step 0."""
    resnet18_stem: str = param("imagenet", choices=("imagenet", "cifar"))
    """ResNet-18's stem (wm.models.resnet18): `imagenet` (torchvision's 7×7/2 conv + max-pool,
    ~0.03 GMAC per 28×28 image, ~660 images/s in training on 2 CPU cores) in the cpu profile;
    `cifar` (3×3/1, no pool, ~0.43 GMAC, ~80 images/s on 2 cores: only a token budget would fit)
    in the gpu profile."""
    large_n_train: int = param(8000, ge=1, le=FASHION_TRAIN)
    """Training images (the first ones of n_train) for the torchvision architectures."""
    large_epochs: float = param(2, gt=0, le=MAX_EPOCHS)
    """Training epochs of the torchvision architectures."""
    large_n_test: int = param(2000, ge=1, le=FASHION_TEST)
    """Test images (the first ones of n_test) for the torchvision architectures' evaluations."""
    batch_size: int = param(128, ge=2, le=MAX_BATCH)
    """Samples per step."""
    lr: float = param(0.05, gt=0, le=10)
    """Peak SGD (Nesterov) learning rate, warm-up then cosine decay."""
    weight_decay: float = param(5e-4, ge=0, le=1)
    """SGD weight decay (the group's 5e-4); the freeze keeps it off the keyed weights."""
    n_bits: int = param(256, ge=1, le=10**7)
    """Payload: keyed weights (one bit each) of the main experiments."""
    kappa: float = param(1.0, gt=0, le=1e6)
    """κ of the value rule w_k = ±κ·σ_ℓ: the keyed weights look like ordinary weights of their layer."""
    rho: float = param(0.05, gt=0, le=1e6)
    """ρ, the norm of WaterMAS's perturbation of the keyed weights (SAM's default)."""
    lam: float = param(5.0, ge=0, le=1e6)
    """λ of WaterMAS, (1+λ)·L(θ) − λ·L(θ+ε_K). What matters is λ·ρ: the extra gradient is
    λ·(g − g_pert) ≈ −λ·∇_F(ε_K·g_K), i.e. of order λ·ρ. Measured (small CNN width 16, 6400
    images, 100 steps, 256 bits, ρ = 0.05; SAM-sharpness at ρ = 0.05 on 1000 test images):
    freeze-only 0.0023 at 80.8% accuracy; λ = 0.5 and 2 indistinguishable from it; λ = 5 with
    the 0.05 cap 0.0036 (1.6× sharper) at 80.0%; λ = 10 uncapped ran away (0.28, 28.9%: the
    unbounded maximisation of pitfall 10). So the smallest λ with a visible effect, kept capped
    (longer runs: see max_sharpness, which then sets the trade-off)."""
    max_sharpness: float | None = param(0.01, gt=0, le=1e6)
    """Cap on S_K: a step whose perturbed loss already exceeds L(θ) by this much drops the −λ term
    (None: no cap). The cap, more than λ, sets the trade-off: measured (small CNN width 16, 30k
    images × 3 epochs, 256 bits, λ = 5), cap 0.05 gave SAM-sharpness 0.056 (28× freeze-only's
    0.002) at a cost of 4.35 accuracy points; cap 0.01 gave 0.0065 (3.3×) at 0.1 point. The
    default keeps the imperceptibility budget of 1 point; the notebook sweeps it (`sweep_caps`).
    TART's replica term gets the same cap."""
    sweep_caps: tuple = param((0.005, 0.02, 0.05), gt=0, le=1e6)
    """Caps of the sharpness-budget sweep (besides max_sharpness)."""
    tart_replicas: int = param(2, ge=1, le=64)
    """R, noisy replicas per step of the ICPR 2020 baseline (the group's testbed uses 2)."""
    tart_noise: float = param(1.0, gt=0, le=1e6)
    """Replica noise std relative to each keyed weight's magnitude κ·σ_ℓ (1.0: the scale of the
    first step of the noise-attack grid). The ancestor's absolute 0.01 was set for values of ±1-±10."""
    tart_lam: float = param(0.5, ge=0, lt=1)
    """λ of TART's L(Γ0) − (λ/R)·Σ_r L(Γ_r). Must stay below 1: the task loss's own weight is
    1 − λ (with λ ≥ 1 the objective would maximise the loss). Measured as above: λ = 0.5 with
    noise 0.5 / 2: sharpness 0.0027 / 0.0036 at 76.9% / 77.8% (the halved task weight costs
    accuracy in a short run)."""
    uchida_bits: int = param(64, ge=1, le=10**7)
    """T, bits of the Uchida baseline (≤ M of the host layer, 9·width for the small CNN's)."""
    uchida_lam: float = param(0.1, gt=0, le=1e6)
    """λ_U of the Uchida regulariser, on the summed BCE. Uchida et al.'s 0.01 assumed hundreds of
    epochs; measured here (width 16, 64 bits, 100 steps): 0.01 left 11% BER, 0.1 gave 0% at the
    same accuracy (80.6% vs 79.6%)."""
    payloads: tuple = param((64, 256, 1024, 4096), of=int, ge=1, le=10**7)
    """Payload sweep (bits) for the payload / imperceptibility / robustness trade-off."""
    noise_k: tuple = param((0.05, 0.1, 0.2, 0.35, 0.5, 1, 3, 9), gt=0, le=1e6)
    """Gaussian-noise attack: std = k × the layer's weight std. The group's grid is 1..9; on these
    models k = 1 already leaves chance accuracy (measured), so the grid adds fractions below 1."""
    prune_amounts: tuple = param((0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), ge=0, le=1)
    """Per-layer L1 pruning fractions (the group's grid)."""
    quant_bits: tuple = param((16, 8, 6, 4, 3, 2), of=int, ge=1, le=32)
    """Min-max weight quantization bit widths."""
    finetune_epochs: tuple = param((1, 3), gt=0, le=MAX_EPOCHS)
    """Fine-tuning attack epochs."""
    finetune_lrs: tuple = param((0.001, 0.01), gt=0, le=10)
    """Fine-tuning attack learning rates (the group's attack: SGD 0.01, momentum 0.9, wd 5e-4)."""
    finetune_fraction: float = param(0.1, gt=0, le=1)
    """Share of the training set the fine-tuning attacker holds."""
    sharpness_samples: int = param(1000, ge=1, le=FASHION_TEST)
    """Test images the sharpness measurement uses."""
    sharpness_random: int = param(8, ge=1, le=10000)
    """Random directions averaged by the sharpness measurement."""
    seg_size: int = param(128, ge=32, le=4096)
    """Segmentation experiment: images resized to seg_size × seg_size."""
    seg_n_train: int = param(500, ge=1, le=10**6)
    """Segmentation experiment: at most this many training images."""
    seg_epochs: float = param(5, gt=0, le=MAX_EPOCHS)
    """Segmentation experiment: training epochs of DeepLabV3 (random initialisation)."""

    PROFILE_DEFAULTS = {
        "smoke": dict(models=("smallcnn",), width=8, n_train=1000, n_test=300, epochs=1, large_n_train=256,
                      large_epochs=0.5, large_n_test=100, n_bits=64, uchida_bits=16, payloads=(16, 64), noise_k=(0.1, 1), sweep_caps=(0.05,),
                      prune_amounts=(0.5, 0.9), quant_bits=(8, 2), finetune_epochs=(0.5,), finetune_lrs=(0.01,),
                      sharpness_samples=200, sharpness_random=2, seg_size=64, seg_n_train=16, seg_epochs=1),
        "cpu": dict(),
        # the small CNN stays: experiments 2-6 (robustness, payload, security, controls) run on it
        "gpu": dict(models=("smallcnn", "resnet18", "vgg16", "mobilenet_v3_small", "swin_t"), resnet18_stem="cifar", n_train=60000, n_test=10000,
                    epochs=4, large_n_train=60000, large_epochs=4, large_n_test=10000, batch_size=256, lr=0.1, uchida_bits=256,
                    sharpness_samples=5000),
    }

    def check(self) -> None:
        require("smallcnn" in self.models, "models", self.models,
                "a tuple that includes smallcnn: experiments 2-6 (robustness, payload, security, controls) run on it")
        require(self.large_n_train <= self.n_train, "large_n_train", self.large_n_train, f"at most n_train ({self.n_train})")
        require(self.large_n_test <= self.n_test, "large_n_test", self.large_n_test, f"at most n_test ({self.n_test})")
        require(self.sharpness_samples <= self.n_test, "sharpness_samples", self.sharpness_samples,
                f"at most n_test ({self.n_test})")
        # every model trains on a full batch at least; the fine-tuning attacker's share is max(1, ...) images
        require(self.n_train >= self.batch_size, "n_train", self.n_train, f"at least batch_size ({self.batch_size})")
        require(self.large_n_train >= self.batch_size, "large_n_train", self.large_n_train,
                f"at least batch_size ({self.batch_size})")

    def budget(self, model: str) -> tuple[int, float, int]:
        """(training images, epochs, test images) for MODEL: the small CNN's or the torchvision
        architectures'."""
        if model == "smallcnn":
            return self.n_train, self.epochs, self.n_test
        return self.large_n_train, self.large_epochs, self.large_n_test

    def train_config(self, seed: int, epochs: float) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           seed=seed, progress=False)  # bars would be stored as notebook outputs


def build_model(name: str, cfg: Config | None = None) -> nn.Module:
    """A freshly initialised 1×28×28 → 10-class classifier by name (`MODELS`)."""
    if name == "smallcnn":
        return wm_models.SmallCNN(in_channels=1, num_classes=10, width=cfg.width if cfg else 16)
    if name == "swin_t":
        return wm_models.swin_t(1, 10)
    if name == "resnet18":
        return wm_models.resnet18(1, 10, stem=cfg.resnet18_stem if cfg else "cifar")
    if name in MODELS:
        return wm_models.build(name, in_channels=1, num_classes=10)
    raise ValueError(f"model={name!r} is unknown: choose from {', '.join(MODELS)}")


def make_hooks(method: str, key, cfg: Config, seed: int = 0, label_smoothing: float = 0.0) -> list[Hook]:
    """The hooks of METHOD: KEY is a `Key`, or a `UchidaKey` for `uchida`. Each sharpening hook
    includes the freeze; a list so the caller can add its own."""
    if method == "none":
        return []
    if method == "uchida":
        if not isinstance(key, UchidaKey):
            raise TypeError("method 'uchida' needs a UchidaKey")
        return [UchidaHook(key, cfg.uchida_lam)]
    if not isinstance(key, Key):
        raise TypeError(f"method {method!r} needs a Key")
    if method == "freeze_only":
        return [FreezeHook(key)]
    if method == "watermas":
        return [SharpnessHook(key, cfg.rho, cfg.lam, cfg.max_sharpness, label_smoothing)]
    if method == "tart":
        return [TartHook(key, cfg.tart_replicas, cfg.tart_noise, cfg.tart_lam, cfg.max_sharpness,
                         label_smoothing, seed=seed)]
    raise ValueError(f"method={method!r} is unknown: choose from {', '.join(METHODS)}")


def train(cfg: Config, method: str, x: torch.Tensor, y: torch.Tensor, seed: int, key=None,
          model_name: str = "smallcnn", n_bits: int | None = None, epochs: float | None = None,
          hooks: list[Hook] | None = None) -> tuple[nn.Module, Key | UchidaKey, History]:
    """Train MODEL_NAME from scratch on (X, Y) with METHOD; returns (model, key, History).

    The key is drawn on the fresh model (seeded by SEED) unless KEY is given, its values are
    written before the first step, and the method's hooks run throughout. For `none` the key is
    drawn but nothing is written: the clean model's negative control. For `uchida` the key is a
    `UchidaKey` (cfg.uchida_bits). HOOKS, if given, replace make_hooks' (e.g. to read their stats).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown: choose from {', '.join(METHODS)}")
    seed_everything(seed)
    model = build_model(model_name, cfg).to(x.device)
    if key is None:
        key = (draw_uchida_key(model, cfg.uchida_bits, seed) if method == "uchida"
               else draw_key(model, n_bits or cfg.n_bits, seed, cfg.kappa))
    if method not in ("none", "uchida"):
        embed_values(model, key)
    n, e, _ = cfg.budget(model_name)
    hooks = make_hooks(method, key, cfg, seed) if hooks is None else hooks
    history = fit(model, x[:n], y[:n], cfg.train_config(seed, epochs or e), hooks=hooks)
    return model, key, history


# ---------------------------------------------------------------------------------------------
# 7. Segmentation (the paper's DeepLabV3 experiment, run when a data set is present)
# ---------------------------------------------------------------------------------------------


def train_segmentation(cfg: Config, method: str, seg, seed: int) -> tuple[nn.Module, Key, History]:
    """DeepLabV3 trained from scratch on SEG (a wm.data.Segmentation) with METHOD (none or a keyed
    method); returns (model, key, History)."""
    if method not in ("none",) + tuple(m for m in METHODS if m not in ("none", "uchida")):
        raise ValueError(f"segmentation supports none, freeze_only, watermas and tart; got {method!r}")
    seed_everything(seed)
    model = wm_models.SegmentationNet(seg.num_classes).to(seg.x_train.device)
    key = draw_key(model, cfg.n_bits, seed, cfg.kappa)
    if method != "none":
        embed_values(model, key)
    tc = TrainConfig(epochs=cfg.seg_epochs, batch_size=min(16, len(seg.x_train)), lr=cfg.lr,
                     weight_decay=cfg.weight_decay, seed=seed, progress=False)
    history = fit(model, seg.x_train, seg.y_train, tc, hooks=make_hooks(method, key, cfg, seed))
    return model, key, history
