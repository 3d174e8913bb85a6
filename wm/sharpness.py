"""Training hooks of the keyed-weight watermarks (split out of wm.watermas, which re-exports them):

1. `FreezeHook`: keeps the keyed weights bit-identical through training (gradient masking and
   writing the values back after every optimizer step, since weight decay and momentum would
   otherwise move them).
2. `SharpnessHook` (WaterMAS) and `TartHook` (random replicas): one or more extra forward/backward
   passes per step with only the keyed weights perturbed.
3. `sharpness`: the loss increase when only the keyed weights move (the measured effect).
4. `UchidaHook`: the projection regulariser.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from wm.keys import Key, UchidaKey, _Slots, _subseed, _uchida_logits
from wm.train import Hook, autocast


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
