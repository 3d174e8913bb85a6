"""wm.train: learning, determinism, schedules, hooks."""

import pytest
import torch
from torch import nn

from wm import data
from wm.models import SmallCNN
from wm.train import Hook, TrainConfig, evaluate, fit, make_schedule, predict, seed_everything


@pytest.fixture(scope="module")
def small():
    return data.load_classification("fashion_mnist", n_train=2000, n_test=500, seed=0)


def _train(small, seed=0, **kw):
    seed_everything(seed)
    model = SmallCNN(in_channels=1, num_classes=10, width=8)
    hist = fit(model, small.x_train, small.y_train, TrainConfig(epochs=1, batch_size=64, seed=seed, **kw))
    return model, hist


def test_learns_well_above_chance(small):
    model, hist = _train(small)
    assert evaluate(model, small.x_test, small.y_test) > 0.6  # chance is 0.1
    assert hist.samples == 2000 and hist.seconds > 0 and len(hist.loss) == 1


def test_deterministic_on_cpu(small):
    a, ha = _train(small, seed=1)
    b, hb = _train(small, seed=1)
    c, _ = _train(small, seed=2)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert ha.loss == hb.loss
    assert not torch.equal(a.head.weight, c.head.weight)


def test_fractional_epochs_and_label_smoothing(small):
    seed_everything(0)
    model = SmallCNN(width=8)
    hist = fit(model, small.x_train, small.y_train, TrainConfig(epochs=0.5, batch_size=100, label_smoothing=0.1))
    assert hist.samples == 1000


def test_cosine_schedule_warms_up_then_decays():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make_schedule(opt, 100, TrainConfig(lr=1.0, warmup=0.1))
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # monotone decay after warm-up
    assert lrs[-1] < 0.01


class _Recorder(Hook):
    """A hook that pins one weight (a post-step constraint) and adds an L2 term."""

    def __init__(self):
        self.calls = {"extra": 0, "backward": 0, "step": 0}

    def extra_loss(self, model, x, y, out):
        self.calls["extra"] += 1
        return 1e-3 * model.head.weight.pow(2).sum()

    def after_backward(self, model):
        self.calls["backward"] += 1
        model.head.weight.grad[0].zero_()

    def after_step(self, model):
        self.calls["step"] += 1
        with torch.no_grad():
            model.head.weight[0, 0] = 0.25


def test_hooks_are_called_every_step_and_constraints_hold(small):
    seed_everything(0)
    model = SmallCNN(width=8)
    before = model.head.weight[0].detach().clone()
    rec = _Recorder()
    fit(model, small.x_train[:640], small.y_train[:640], TrainConfig(epochs=1, batch_size=64, weight_decay=0),
        hooks=[rec])
    assert rec.calls == {"extra": 10, "backward": 10, "step": 10}
    assert model.head.weight[0, 0].item() == 0.25
    # row 0 got no gradient and no weight decay: only the pinned entry moved
    assert torch.equal(model.head.weight[0, 1:], before[1:])


def test_regression_losses_and_predict_restores_mode():
    seed_everything(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    x = torch.rand(64, 3, 16, 16)
    y = x.flip(-1)
    mse0 = torch.mean((predict(net, x) - y) ** 2).item()
    fit(net, x, y, TrainConfig(epochs=30, batch_size=16, loss="mse", optimizer="adam", lr=3e-3, weight_decay=0))
    assert torch.mean((predict(net, x) - y) ** 2).item() < 0.5 * mse0
    net.train()
    predict(net, x[:4])
    assert net.training


@pytest.mark.parametrize("field,value", [("epochs", 0), ("optimizer", "lbfgs"), ("loss", "hinge"),
                                         ("schedule", "step"), ("batch_size", 0), ("lr", -1.0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}="):
        TrainConfig(**{field: value})


def test_fit_refuses_an_empty_training_set():
    model = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match="non-empty training set"):
        fit(model, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), TrainConfig(epochs=1))


def test_progress_lines_go_to_the_process_stderr_only_when_asked(monkeypatch, capfd):
    from wm.progress import Progress
    monkeypatch.setenv("WM_PROGRESS", "1")
    monkeypatch.setenv("WM_PROGRESS_SECONDS", "0")
    live = Progress("training X", total=4, epochs=2)
    for step in range(1, 5):
        live.update(step, (step - 1) // 2)
    err = capfd.readouterr().err
    assert "wm: training X: epoch 1/2, step 1/4" in err and "epoch 2/2, step 4/4" in err
    monkeypatch.setenv("WM_PROGRESS", "0")
    Progress("training Y", total=1).update(1)
    assert "training Y" not in capfd.readouterr().err
