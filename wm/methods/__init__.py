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
    """The interface: subclasses set the class attributes and implement `train_twin`, `mark`,
    `detect` and `utility`; `attack` where the method has attacks of its own."""

    name: ClassVar[str]
    label: ClassVar[str]
    kind: ClassVar[str]
    unit: ClassVar[str]
    """The unit of `utility`: "test accuracy" or "PSNR (dB)"."""
    rule: ClassVar[str]
    """The decision rule of `detect`'s `verified`, in words (tables and verdicts print it)."""
    model: ClassVar[str]
    """The results table's `model` of the marked model (the attacked artefact)."""
    twin_recipe: ClassVar[str]
    """Methods whose unmarked twins are the same model (same data, initialisation and recipe)
    share this name: a suite trains and attacks that twin once and scores it with each key."""
    twin_model: ClassVar[str]
    """The results table's `model` of the twin (its control rows add `:control_<method>`)."""
    own_attacks: ClassVar[dict[str, str]] = {}
    """The method's own attacks (piracy, overwrite): name → axis label; `attack` runs them and
    `own_grid` gives their strengths."""
    not_applicable: ClassVar[dict[str, str]] = {}
    """Attacks of this kind (registered, or other methods' own) that do not apply: name → why."""
    baseline_of: ClassVar[str | None] = None
    """The paper method this one is a baseline or ablation of (None for the papers' methods)."""
    matched_cost: ClassVar[tuple[str, str] | None] = None
    """(budget key, fidelity metric): a baseline whose strength the budget key sets, and which,
    where that key is None, marks at the cost its paper method measured on the same seed (that
    method's `fidelity` metric), so that the two are compared at equal cost (wm.suite.run_seed)."""
    null_archs: ClassVar[tuple[str, ...]] = ()
    """Architectures of the independent unmarked models of the null population (wm.nulls), the
    twin's first; `train_twin` builds the one a Setup's budget names as `arch`."""

    def train_twin(self, setup: Setup) -> Any:
        """The unmarked model the marked one is compared with (architecture: the budget's `arch`,
        default the first of `null_archs`)."""
        raise NotImplementedError

    def owner_secret(self, setup: Setup) -> Any:
        """The owner's secret for SETUP's seed, as `mark` would make it. By default it trains the
        marked model; methods whose secret does not depend on training (a drawn key, a signature)
        derive it directly, so that scoring a null population costs no marked model."""
        return self.train(setup).secret

    def mark(self, setup: Setup, twin: Any) -> tuple[Any, Any]:
        """The marked model and its secret (TWIN is there for methods that mark a trained model)."""
        raise NotImplementedError

    def detect(self, suspect: Any, secret: Any, setup: Setup) -> dict[str, float]:
        """`score` (the continuous detector statistic, higher = more evidence of the owner),
        `verified` (1.0 where the paper's decision rule accepts, else 0.0) and any detail the
        method reports (BER, acc_null, success rate ...)."""
        raise NotImplementedError

    def utility(self, suspect: Any, setup: Setup) -> float:
        raise NotImplementedError

    def fidelity(self, trained: Trained, setup: Setup) -> dict[str, float]:
        """What marking cost beyond utility, where the method measures it (image services: the
        PSNR of the marked outputs against the twin's)."""
        return {}

    def null_secrets(self, trained: Trained, setup: Setup, n: int, seed: int) -> list[tuple[str, Any]]:
        """Secrets that are not the owner's, to score the marked model with (issue 17's key null
        population): N random keys or signatures (case `random`), and near misses of the owner's
        (`near-miss: …`: a few bits flipped, the pattern or positions shifted). Each is a
        (case, secret) that `detect` accepts. SEED draws them."""
        raise NotImplementedError

    def own_grid(self, attack: str, setup: Setup) -> list:
        """Strengths of own attack ATTACK, weakest first."""
        raise NotImplementedError

    def attack(self, attack: str, strength: Any, suspect: Any, trained: Trained,
               setup: Setup) -> tuple[Any, dict[str, float] | None]:
        """Own attack ATTACK at STRENGTH on SUSPECT (the marked model or the twin): the attacked
        model (or delivered outputs) and, where the thief adds a mark of its own, the thief's
        detection of it (its claim), else None."""
        raise NotImplementedError(f"{self.name} has no attack {attack!r}")

    # --- derived ---------------------------------------------------------------------------

    def train(self, setup: Setup, twin: Any = None) -> Trained:
        """The marked model, its twin (trained here unless given) and the secret."""
        twin = self.train_twin(setup) if twin is None else twin
        marked, secret = self.mark(setup, twin)
        return Trained(marked, twin, secret)

    def detect_many(self, suspect: Any, secrets: list, setup: Setup) -> list[dict[str, float]]:
        """`detect` of SUSPECT with each of SECRETS (a key population); methods override it where
        the secrets can share the suspect's reading (one extraction, many comparisons)."""
        return [self.detect(suspect, s, setup) for s in secrets]

    def arch(self, setup: Setup) -> str:
        """The architecture SETUP asks for (its budget's `arch`), checked against `null_archs`."""
        arch = setup.budget.get("arch", self.null_archs[0])
        if arch not in self.null_archs:
            raise ValueError(f"arch={arch!r}: {self.name} trains {', '.join(self.null_archs)}")
        return arch

    def score(self, suspect: Any, secret: Any, setup: Setup) -> float:
        """The detector statistic of SUSPECT (a model, or a service's delivered outputs)."""
        return self.detect(suspect, secret, setup)["score"]


REGISTRY: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add one instance of CLS to REGISTRY under its name (a method file's last statement)."""
    if cls.kind not in KINDS:
        raise ValueError(f"{cls.__name__}.kind={cls.kind!r} must be one of {', '.join(KINDS)}")
    if cls.name in REGISTRY:
        raise ValueError(f"two methods are named {cls.name!r}")
    REGISTRY[cls.name] = cls()
    return cls


KIND_ORDER = ("classifier-black", "classifier-white", "image-service")


def ordered(names=None) -> list[str]:
    """NAMES (default: every registered method) as tables list them: by kind, each paper's method
    before its baselines."""
    names = list(REGISTRY) if names is None else list(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}: choose from {', '.join(REGISTRY)}")
    return sorted(names, key=lambda n: (KIND_ORDER.index(REGISTRY[n].kind), REGISTRY[n].baseline_of is not None, n))


def own_attacks() -> list[str]:
    """Every method's own attacks (piracy, overwrite, ...), each once, in registry order."""
    return list(dict.fromkeys(a for m in REGISTRY.values() for a in m.own_attacks))


def _load_all() -> None:
    """Import every method file of this folder (each registers itself)."""
    import importlib
    import pkgutil
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):  # _setups, _keyed: shared parts, not methods
            importlib.import_module(f"{__name__}.{info.name}")


_load_all()
