"""What every study's Config shares: profiles and fail-early validation.

A study's Config is a dataclass with a docstring under every field, a PROFILE_DEFAULTS table
(`smoke`, `cpu`, `gpu`) and a `check()` that raises one ValueError naming the bad field.
`Config.from_profile(profile, **overrides)` resolves `auto`, lays the overrides over the
profile's defaults (a None override means "the profile's default", which is how the notebooks'
parameters cells say "not set") and validates, all before any data is loaded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from wm import PROFILES


def resolve_profile(profile: str) -> str:
    """`auto` → `gpu` where CUDA is available, else `cpu`; anything unknown is an error."""
    if profile == "auto":
        import torch
        return "gpu" if torch.cuda.is_available() else "cpu"
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} must be one of {', '.join((*PROFILES, 'auto'))}")
    return profile


def require(ok: bool, field: str, value: Any, expected: str) -> None:
    """Raise the one clear error a bad parameter gets."""
    if not ok:
        raise ValueError(f"{field}={value!r} is invalid: {expected}")


class StudyConfig:
    """Mixin for dataclass configs; subclasses define PROFILE_DEFAULTS and check()."""

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
        cfg.check()
        return cfg

    def check(self) -> None:  # pragma: no cover - every study overrides it
        pass

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
