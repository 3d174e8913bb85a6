"""What every study's Config shares: profiles and fail-early, declarative validation.

A study's Config is a dataclass with a docstring under every field and a PROFILE_DEFAULTS table
(`smoke`, `cpu`, `gpu`). Each field declares what it accepts where it is defined, with `param`:

    epochs: float = param(6, gt=0, le=MAX_EPOCHS)
    # followed, as every field, by its docstring

The field's annotation gives its type (`int`, `float`, `str`, `bool`, `tuple`, each optionally
`| None`), and `param`'s bounds and choices the rest. `Config.from_profile(profile, **overrides)`
resolves `auto`, lays the overrides over the profile's defaults (a None override means "the
profile's default", which is how the notebooks' parameters cells say "not set"), checks every
field and then the Config's own `check()` (constraints between fields, such as a split that must
not be empty), all before any data is loaded. Every failure is one ValueError naming the field.

Rules that hold for every field, whatever it declares: numbers are finite (no NaN, no infinity,
no overflow such as 1e309), a boolean is never taken for a number, an integer field takes only
integers, and a tuple field is never empty.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, ClassVar

from wm import PROFILES

# Upper bounds shared by every study: generous for the papers' scale, small enough that a typo
# (an extra zero, 1e9) is refused instead of starting a run that would never end.
MAX_SEED = 2**31 - 1
"""Seeds are drawn in 0..MAX_SEED; studies add small offsets (seed + k), and NumPy takes < 2**32."""
MAX_SEEDS = 100
"""Repetitions of one experiment."""
MAX_EPOCHS = 1000
"""Epochs of any training."""
MAX_WIDTH = 1024
"""Channels of a network's first layer."""
MAX_BATCH = 65536
"""Samples per step."""
FASHION_TRAIN, FASHION_TEST = 60000, 10000
"""Fashion-MNIST's split sizes, the bounds of every classifier study's sizes."""
MAX_PAIRS = 100000
"""Image pairs (patches) of the image studies."""


def resolve_profile(profile: str) -> str:
    """`auto` → `gpu` where CUDA is available, else `cpu`; anything unknown is an error."""
    if profile == "auto":
        import torch
        return "gpu" if torch.cuda.is_available() else "cpu"
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} must be one of {', '.join((*PROFILES, 'auto'))}")
    return profile


def require(ok: bool, field: str, value: Any, expected: str) -> None:
    """Raise the one clear error a bad parameter gets (for the constraints between fields)."""
    if not ok:
        raise ValueError(f"{field}={value!r} is invalid: {expected}")


def parse_budget(text: str, field: str) -> dict[str, Any]:
    """Another study's budget overrides written as "name=value,name=value" (the string parameter
    FIELD of a notebook that trains with that study's recipe): keyword arguments of its Config.
    profile, seed and seeds are the notebook's own and cannot be overridden there."""
    from wm.runner import parse_value  # wm.runner imports this module
    out = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() in ("profile", "seed", "seeds"):
            raise ValueError(f"{field}: {item!r} must look like name=value (a budget field)")
        out[name.strip()] = parse_value(value.strip())
    return out


# ---------------------------------------------------------------------------------------------
# Declarative checks on fields
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Check:
    """What one field (or each element of a tuple field) accepts besides its type."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    of: type | None = None
    """Element type of a tuple field (default: any real number)."""
    multiple_of: int | None = None
    empty_ok: bool = False
    """A tuple field that may be empty (an experiment's optional variants)."""

    def describe(self, kind: str) -> str:
        words = {"int": "an integer", "float": "a finite number", "str": "a string", "bool": "True or False"}
        if self.choices is not None:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = words[kind]
            lo = f"≥ {_num(self.ge)}" if self.ge is not None else f"> {_num(self.gt)}" if self.gt is not None else None
            hi = f"≤ {_num(self.le)}" if self.le is not None else f"< {_num(self.lt)}" if self.lt is not None else None
            text += "".join(f" {b}" for b in (lo, hi and ("and " if lo else "") + hi) if b)
            if self.multiple_of:
                text += f", a multiple of {self.multiple_of}"
        return text

    def accepts(self, value: Any, kind: str) -> bool:
        if kind == "bool":
            return isinstance(value, bool)
        if kind == "str" or self.choices is not None:
            return (kind != "str" or isinstance(value, str)) and (self.choices is None or value in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False  # True is an int to Python, never a number here
        if kind == "int" and not isinstance(value, int):
            return False
        if not math.isfinite(value):  # NaN, ±inf, and 1e309 (which Python reads as inf)
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)
                and (self.multiple_of is None or value % self.multiple_of == 0))


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def param(default: Any, **check: Any) -> Any:
    """A Config field with its check (see Check), declared where the field is."""
    return dataclasses.field(default=default, metadata={"check": Check(**check)})


def _kind(annotation: Any) -> tuple[str, bool]:
    """('int' | 'float' | 'str' | 'bool' | 'tuple', optional) from a field's annotation."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [p.strip() for p in text.split("|")]
    optional = "None" in parts
    base = next(p for p in parts if p != "None").split("[")[0]
    if base not in ("int", "float", "str", "bool", "tuple"):
        raise TypeError(f"a Config field's type must be int, float, str, bool or tuple, not {text}")
    return base, optional


def check_field(f: dataclasses.Field, value: Any) -> Any:
    """The field's value, checked (a list becomes a tuple); ValueError naming the field if bad."""
    kind, optional = _kind(f.type)
    check: Check = f.metadata.get("check", Check())
    if value is None:
        if optional:
            return None
        raise ValueError(f"{f.name}=None is invalid: it must be set")
    if kind != "tuple":
        if not check.accepts(value, kind):
            raise ValueError(f"{f.name}={value!r} is invalid: {check.describe(kind)}"
                             + (" or None" if optional else ""))
        return value
    element = {int: "int", float: "float", str: "str", bool: "bool", None: "float"}[check.of]
    if not isinstance(value, (tuple, list)) or not (value or check.empty_ok) \
            or not all(check.accepts(v, element) for v in value):
        raise ValueError(f"{f.name}={value!r} is invalid: a {'' if check.empty_ok else 'non-empty '}tuple "
                         f"of values each {check.describe(element)}")
    return tuple(value)


class StudyConfig:
    """Mixin for dataclass configs; subclasses define PROFILE_DEFAULTS and may add check()."""

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_profile(cls, profile: str = "auto", **overrides: Any):
        profile = resolve_profile(profile)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}: known are {', '.join(sorted(names))}")
        values = dict(cls.PROFILE_DEFAULTS.get(profile, {}))
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["profile"] = profile
        cfg = cls(**values)
        cfg.validate()
        if profile == "gpu":
            warn_if_no_cuda()
        return cfg

    def validate(self) -> None:
        """Every field's declared check, then the constraints between fields (`check`)."""
        for f in dataclasses.fields(self):
            if f.name != "profile":
                object.__setattr__(self, f.name, check_field(f, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """Constraints between fields (sizes that would leave a split empty, ...); none by default."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


GPU_WITHOUT_CUDA = "the gpu profile is running without CUDA, on the CPU: its sizes are meant for a GPU"


def warn_if_no_cuda() -> None:
    """The gpu profile on a machine without CUDA: a visible warning (the provenance records it too)."""
    import torch
    if not torch.cuda.is_available():
        warnings.warn(GPU_WITHOUT_CUDA, stacklevel=3)
