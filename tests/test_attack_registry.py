"""The attack registry's contract: every registered attack, on every kind of method it applies to,
returns a new model (or new outputs) and leaves the attacked model unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wm import attacks
from wm.methods import KINDS, REGISTRY as METHODS
from wm.methods._setups import classifier_setup, image_setup

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def targets():
    """One trained model per kind, with its setup (the attacker's data comes with it)."""
    cls = classifier_setup("smoke", seed=0, device="cpu", n_train=600, n_attacker=200, n_test=100, width=8,
                           epochs=1, batch_size=128, n_bits=64)
    img = image_setup("smoke", seed=0, device="cpu", size=16, n_owner=32, n_attacker=32, n_test=8, m_epochs=1,
                      stage1_epochs=1)
    return {"classifier-white": (METHODS["watermas"].train(cls).marked, cls),
            "classifier-black": (METHODS["null_embedding"].train(cls).marked, cls),
            "image-service": (METHODS["deep"].train(img).marked, img)}


def test_every_attack_declares_kinds_a_grid_and_an_axis():
    assert {"finetune", "prune", "quantize", "noise", "distill", "surrogate"} <= set(attacks.REGISTRY)
    for a in attacks.REGISTRY.values():
        assert a.kinds and set(a.kinds) <= set(KINDS) and a.grid and a.axis
    assert [a.name for a in attacks.for_kind("image-service")] == ["finetune", "prune", "quantize", "noise", "surrogate"]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name,kind", [(a, k) for a, at in sorted(attacks.REGISTRY.items()) for k in at.kinds])
def test_attack_returns_something_new_and_leaves_its_input_unchanged(targets, name, kind):
    model, setup = targets[kind]
    before = _state(model)
    attack = attacks.REGISTRY[name]
    strength = attack.grid[0] if name not in ("finetune", "distill", "surrogate") else 0.5
    out = attack.run(model, strength, setup, kind)
    assert out is not model and isinstance(out, (nn.Module, torch.Tensor))
    after = _state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), \
        f"{name} changed the model it attacked"
