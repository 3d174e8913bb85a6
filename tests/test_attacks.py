"""wm.attacks: each returns a new model, leaves its input untouched, and does what it says."""

import pytest
import torch

from wm import attacks, data
from wm.models import SmallCNN
from wm.train import TrainConfig, evaluate, fit, predict, seed_everything


@pytest.fixture(scope="module")
def trained():
    ds = data.load_classification("fashion_mnist", n_train=2000, n_test=500, seed=0)
    seed_everything(0)
    model = SmallCNN(width=8)
    fit(model, ds.x_train, ds.y_train, TrainConfig(epochs=2, batch_size=64))
    return model, ds


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, snap):
    return all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())


def _weights(model):
    return torch.cat([m.weight.detach().flatten() for m, _ in attacks.attacked_weights(model)])


@pytest.mark.parametrize("name,call", [
    ("prune", lambda m, ds: attacks.prune(m, 0.5)),
    ("prune_layer", lambda m, ds: attacks.prune(m, 0.5, scope="layer")),
    ("quantize", lambda m, ds: attacks.quantize(m, 4)),
    ("noise", lambda m, ds: attacks.weight_noise(m, 1.0)),
    ("finetune", lambda m, ds: attacks.finetune(m, ds.x_train, ds.y_train, epochs=0.5, lr=0.01, fraction=0.2)),
    ("distill", lambda m, ds: attacks.distill(m, SmallCNN(width=8), ds.x_train[:256], epochs=0.5)),
])
def test_new_model_and_input_untouched(trained, name, call):
    model, ds = trained
    snap = _snapshot(model)
    attacked = call(model, ds)
    assert attacked is not model
    assert _unchanged(model, snap), f"{name} modified its input"
    assert not _unchanged(attacked, snap), f"{name} changed nothing"


def test_global_pruning_sparsity(trained):
    model, ds = trained
    for amount in (0.3, 0.9):
        w = _weights(attacks.prune(model, amount))
        assert (w == 0).float().mean().item() == pytest.approx(amount, abs=0.01)
    assert torch.equal(_weights(attacks.prune(model, 0.0)), _weights(model))
    # the pruned weights are the smallest ones
    pruned = _weights(attacks.prune(model, 0.5))
    orig = _weights(model)
    assert orig[pruned == 0].abs().max() <= orig[pruned != 0].abs().min()


def test_layer_pruning_is_per_layer(trained):
    model, _ = trained
    pruned = attacks.prune(model, 0.5, scope="layer")
    for m, _ in attacks.attacked_weights(pruned):
        assert (m.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert not any(hasattr(m, "weight_mask") for m in pruned.modules())  # made permanent


def test_quantization_levels(trained):
    model, ds = trained
    for bits in (2, 4):
        q = attacks.quantize(model, bits)
        for (m, _), (mo, _) in zip(attacks.attacked_weights(q), attacks.attacked_weights(model)):
            assert m.weight.unique().numel() <= 2 ** bits
            step = (mo.weight.max() - mo.weight.min()) / (2 ** bits - 1)
            assert (m.weight - mo.weight).abs().max() <= step / 2 + 1e-6
    assert evaluate(attacks.quantize(model, 8), ds.x_test, ds.y_test) > evaluate(model, ds.x_test, ds.y_test) - 0.02
    with pytest.raises(ValueError, match="bits"):
        attacks.quantize(model, 0)


def test_weight_noise_scale(trained):
    model, _ = trained
    noisy = attacks.weight_noise(model, 2.0, seed=1)
    for (m, _), (mo, _) in zip(attacks.attacked_weights(noisy), attacks.attacked_weights(model)):
        if mo.weight.numel() < 500:
            continue
        ratio = (m.weight - mo.weight).std() / mo.weight.std()
        assert ratio.item() == pytest.approx(2.0, rel=0.15)
    assert torch.equal(_weights(attacks.weight_noise(model, 1.0, seed=3)), _weights(attacks.weight_noise(model, 1.0, seed=3)))


def test_distilled_student_agrees_with_teacher(trained):
    model, ds = trained
    student = attacks.distill(model, SmallCNN(width=8), ds.x_train, epochs=2, temperature=4.0)
    agree = (predict(student, ds.x_test).argmax(1) == predict(model, ds.x_test).argmax(1)).float().mean()
    assert agree.item() > 0.75


def test_finetune_budget_is_a_fraction(trained):
    model, ds = trained
    with pytest.raises(ValueError, match="fraction"):
        attacks.finetune(model, ds.x_train, ds.y_train, fraction=0)


def test_prune_accepts_channels_last_weights(trained):
    # wm.train leaves convolutions in channels_last; torch's pruning needs a plain layout
    model, _ = trained
    cl = SmallCNN(width=8).to(memory_format=torch.channels_last)
    cl.load_state_dict(model.state_dict())
    pruned = attacks.prune(cl, 0.5)
    assert (_weights(pruned) == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("freeze", [True, False])
def test_transfer_replaces_the_head_and_trains_only_what_it_says(trained, freeze):
    model, ds = trained
    snap = _snapshot(model)
    keep = ds.y_train < 4
    moved = attacks.transfer(model, ds.x_train[keep], ds.y_train[keep], num_classes=4, epochs=1, lr=0.01,
                             freeze_features=freeze)
    assert _unchanged(model, snap) and moved.head.out_features == 4
    assert predict(moved, ds.x_test[:8]).shape == (8, 4)
    body = lambda m: [p for n, p in m.named_parameters() if not n.startswith("head")]
    same = all(torch.equal(a, b) for a, b in zip(body(moved), body(model)))
    assert same == freeze  # head-only transfer leaves every feature weight as it was
    assert all(p.requires_grad for p in moved.parameters())
    assert evaluate(moved, ds.x_test[ds.y_test < 4], ds.y_test[ds.y_test < 4]) > 0.5


def test_transfer_needs_a_head():
    with pytest.raises(TypeError, match="head"):
        attacks.transfer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)),
                         torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), num_classes=2)
