"""The secret of the keyed-weight watermarks (WaterMAS, freeze-only, TART) and of Uchida et al.'s
projection baseline: drawing a key, writing its bits into the weights, reading them back, and the
key-aware overwrite attack. Split out of wm.watermas (which re-exports every name) so that each
module reads top to bottom in a few hundred lines.

1. `Key`, `draw_key`, `embed_values`, `extract`, `ber`, `overwrite`: the secret and the bits it carries.
2. `UchidaKey`, `draw_uchida_key`, `uchida_extract`, `uchida_ber`: the projection baseline's secret.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wm import metrics
from wm.attacks import attacked_weights


KEY_FORMAT = "wm.watermas.Key/1"
"""The saved key's format name (kept from when the key lived in wm.watermas)."""


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


@torch.no_grad()
def uchida_extract(model: nn.Module, ukey: UchidaKey) -> torch.Tensor:
    """b̂ = 1[X·w > 0], a CPU long tensor."""
    return (_uchida_logits(model, ukey) > 0).long().cpu()


def uchida_ber(model: nn.Module, ukey: UchidaKey) -> float:
    return metrics.ber(uchida_extract(model, ukey), ukey.bit_tensor())

