"""Watermarking methods behind one small interface, and their registry.

A method is one file in this folder ending in a `register(...)` of a `Method` subclass: its name
(the results table's `method`), label, kind, unit of utility, how to train a marked model with its
unmarked twin, how to score a suspect (a continuous detector statistic: higher is more evidence of
the owner) and how to measure the model's utility. Code outside a method's file reaches it only
through `REGISTRY`. The kinds say what a detector needs and so which attacks apply:

* `classifier-white`: reads the weights (WaterMAS and its baselines);
* `classifier-black`: queries the classifier (null embedding);
* `image-service`: reads the outputs of an image-to-image service (Zhang et al.'s deep mark and the
  spread-spectrum baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

KINDS = ("classifier-white", "classifier-black", "image-service")


@dataclass
class Setup:
    """The data and budget every method of one kind is trained and judged on (see `setups`)."""

    seed: int
    device: torch.device
    budget: dict[str, Any] = field(default_factory=dict)
    """Sizes and epochs shared by the methods (width, epochs, batch_size, n_bits, size, ...)."""
    data: dict[str, Any] = field(default_factory=dict)
    """Owner's, attacker's and test data: x_train/y_train/x_att/y_att/x_test/y_test for
    classifiers, own/att/test (wm.image_processing.Pairs) for image services."""


@dataclass
class Trained:
    """A marked model, its unmarked twin (same data, initialisation and recipe) and the secret that
    scores a suspect (a key, a signature, an extractor)."""

    marked: Any
    twin: Any
    secret: Any


class Method:
    """The interface: subclasses set the class attributes and implement the four methods."""

    name: ClassVar[str]
    label: ClassVar[str]
    kind: ClassVar[str]
    unit: ClassVar[str]
    """The unit of `utility`: "test accuracy" or "PSNR (dB)"."""

    def train(self, setup: Setup) -> Trained:
        raise NotImplementedError

    def score(self, suspect: Any, secret: Any, setup: Setup) -> float:
        """The detector statistic of SUSPECT (a model, or a service's delivered outputs)."""
        raise NotImplementedError

    def utility(self, suspect: Any, setup: Setup) -> float:
        raise NotImplementedError


REGISTRY: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add one instance of CLS to REGISTRY under its name (a method file's last statement)."""
    if cls.kind not in KINDS:
        raise ValueError(f"{cls.__name__}.kind={cls.kind!r} must be one of {', '.join(KINDS)}")
    if cls.name in REGISTRY:
        raise ValueError(f"two methods are named {cls.name!r}")
    REGISTRY[cls.name] = cls()
    return cls


def _load_all() -> None:
    """Import every method file of this folder (each registers itself)."""
    import importlib
    import pkgutil
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):  # _setups, _keyed: shared parts, not methods
            importlib.import_module(f"{__name__}.{info.name}")


_load_all()
