"""wm.null_embedding: signature → pattern, stamping, BatchNorm hygiene, verification."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from wm import data, models
from wm.null_embedding import (Config, NullEmbeddingHook, Owner, derive, embed, frozen_batchnorm, stamp, verify,
                               transferred_accuracies, train_model,
                               watermark_accuracies)
from wm.train import TrainConfig, fit, seed_everything

STAMP_TIME = "2026-01-01T00:00:00Z"
_DERIVE = ("from wm.null_embedding import Owner, derive; import json; "
           "w = derive(Owner.from_seed('alice', 7).sign('2026-01-01T00:00:00Z'), 6, 2000.0, 10, 28, 28); "
           "print(json.dumps([w.target, w.row, w.col, list(w.bits)]))")


def _wm(owner="alice", seed=7, n=6, lam=2000.0):
    return derive(Owner.from_seed(owner, seed).sign(STAMP_TIME), n, lam, 10, 28, 28)


def test_derivation_is_stable_across_processes():
    here = _wm()
    runs = [json.loads(subprocess.run([sys.executable, "-c", _DERIVE], capture_output=True, text=True,
                                      check=True, env={"PYTHONHASHSEED": str(s), "PATH": ""}).stdout)
            for s in (1, 2)]
    assert runs[0] == runs[1] == [here.target, here.row, here.col, list(here.bits)]


def test_derivation_fields_and_ranges():
    w = _wm()
    assert len(w.bits) == 36 and set(w.bits) <= {0, 1} and 0 < sum(w.bits) < 36
    assert 0 <= w.target < 10 and 0 <= w.row <= 22 and 0 <= w.col <= 22
    assert _wm(seed=8).bits != w.bits and _wm("bob").bits != w.bits  # another key, another pattern
    assert _wm(lam=1.0).bits == w.bits  # λ sets the magnitude only
    assert len(_wm(n=8).bits) == 64
    with pytest.raises(ValueError, match="n=17"):
        derive(Owner.from_seed("a", 0).sign(STAMP_TIME), 17, 1.0, 10, 28, 28)


def test_tampered_signature_fails_verification():
    sig = Owner.from_seed("alice", 7).sign(STAMP_TIME)
    assert sig.is_valid()
    flipped = bytearray(sig.signature)
    flipped[5] ^= 1
    forged = [dataclasses.replace(sig, signature=bytes(flipped)),
              dataclasses.replace(sig, verifier="mallory|" + STAMP_TIME),
              dataclasses.replace(sig, public_key=Owner.from_seed("mallory", 0).sign(STAMP_TIME).public_key)]
    model = models.SmallCNN(width=4)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for bad in forged:
        assert not bad.is_valid()
        result = verify(model, bad, x, y, n=6, lam=2000.0, num_classes=10)
        assert not result.signature_valid and not result.verified and "signature" in result.reason


def test_stamping_never_clamps_and_keeps_the_rest():
    w = _wm(lam=2000.0)
    x = torch.randn(4, 3, 28, 28)
    for mode, sign in (("null", 1), ("true", -1)):
        out = stamp(x, w, mode)
        rows, cols = w.square()
        expected = (torch.tensor(w.bits, dtype=torch.float32).view(6, 6) * 2 - 1) * 2000.0 * sign
        for c in range(3):  # every channel carries the pattern, values beyond any pixel range
            assert torch.equal(out[:, c, rows, cols], expected.expand(4, 6, 6))
        mask = torch.ones(28, 28, dtype=torch.bool)
        mask[rows, cols] = False
        assert torch.equal(out[:, :, mask], x[:, :, mask])
    assert out.abs().max().item() == 2000.0
    assert not torch.equal(stamp(x, w, "null"), x)  # a copy, the input untouched
    with pytest.raises(ValueError, match="mode"):
        stamp(x, w, "both")


def test_stamped_passes_leave_batchnorm_statistics_alone():
    seed_everything(0)
    model = models.SmallCNN(width=4)
    model.train()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone(), bn.running_var.clone()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    loss = NullEmbeddingHook(_wm(lam=2000.0)).extra_loss(model, x, y, None)
    assert torch.isfinite(loss) and loss.requires_grad
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert model.training and bn.training  # modes restored
    with frozen_batchnorm(model):
        assert not bn.training
    model(x)  # a clean training pass does update them
    assert not torch.equal(bn.running_mean, before[0])


@pytest.fixture(scope="module")
def tiny():
    ds = data.load_classification("fashion_mnist", n_train=3000, n_test=1000, seed=0)
    sig = Owner.from_seed("alice", 7).sign(STAMP_TIME)
    w = derive(sig, 6, 1.0, 10, 28, 28)
    seed_everything(0)
    clean = models.SmallCNN(width=8)
    fit(clean, ds.x_train, ds.y_train, TrainConfig(epochs=2))
    seed_everything(0)
    marked = models.SmallCNN(width=8)
    embed(marked, w, ds.x_train, ds.y_train, TrainConfig(epochs=2))
    return ds, sig, w, clean, marked


def test_clean_model_fails_verification(tiny):
    ds, sig, w, clean, marked = tiny
    result = verify(clean, sig, ds.x_test, ds.y_test, n=6, lam=1.0, num_classes=10)
    assert result.signature_valid and not result.verified
    assert result.acc_true < 0.3  # the inverted pattern means nothing to a clean model
    # the watermarked model, even this small, has learnt the true embedding
    assert watermark_accuracies(marked, w, ds.x_test, ds.y_test)[1] > 0.6


def test_verification_accepts_when_both_accuracies_pass(tiny):
    ds, sig, w, clean, marked = tiny
    acc_null, acc_true = watermark_accuracies(marked, w, ds.x_test, ds.y_test)
    low = verify(marked, sig, ds.x_test, ds.y_test, n=6, lam=1.0, num_classes=10, threshold=min(acc_null, acc_true) - 0.01)
    high = verify(marked, sig, ds.x_test, ds.y_test, n=6, lam=1.0, num_classes=10, threshold=min(acc_null, acc_true) + 0.01)
    assert low.verified and not high.verified and low.target == w.target


def test_shared_batchnorm_variant_does_pollute_the_statistics():
    # the contrast to the frozen default, measured in the notebook
    seed_everything(0)
    model = models.SmallCNN(width=4)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_var.clone()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    NullEmbeddingHook(_wm(lam=2000.0), bn="shared").extra_loss(model, x, y, None)
    assert bn.running_var.max() > 100 * before.max()  # ±2000 pixels inflate the running variance


def test_stamped_streams_use_the_requested_share_of_the_batch():
    sizes = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(784, 10)

        def forward(self, x):
            sizes.append(len(x))
            return self.lin(x.flatten(1))

    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    NullEmbeddingHook(_wm(), fraction=0.25).extra_loss(Spy(), x, y, None)
    assert sizes == [8]  # frozen BatchNorm: one pass over the null- and true-stamped 16 × 0.25 images
    sizes.clear()
    NullEmbeddingHook(_wm(), fraction=0.25, bn="shared").extra_loss(Spy(), x, y, None)
    assert sizes == [4, 4]  # shared statistics: each stream its own pass


def test_one_pass_over_both_streams_gives_the_two_pass_losses():
    # with BatchNorm frozen every sample is treated alone, so concatenating the streams is exact
    seed_everything(0)
    model = models.build("smallcnn", in_channels=1, num_classes=10, width=8).train()
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    w = _wm()
    hook = NullEmbeddingHook(w, w_null=1.0, w_true=0.0)
    with frozen_batchnorm(model):
        two_pass = torch.nn.functional.cross_entropy(model(stamp(x, w, "null")), y)
    assert torch.allclose(hook.extra_loss(model, x, y, None), two_pass, rtol=1e-5, atol=1e-6)
    hook = NullEmbeddingHook(w, w_null=0.0, w_true=1.0)
    with frozen_batchnorm(model):
        two_pass = torch.nn.functional.cross_entropy(model(stamp(x, w, "true")), torch.full_like(y, w.target))
    assert torch.allclose(hook.extra_loss(model, x, y, None), two_pass, rtol=1e-5, atol=1e-6)
    assert all(m.training for m in model.modules())  # BatchNorm back in training mode afterwards


def test_transferred_accuracies_find_the_forced_class():
    w = _wm(lam=50.0)
    r, c = (27, 27) if (w.row, w.col) == (0, 0) else (0, 0)  # a pixel outside the square

    class Forced(torch.nn.Module):  # predicts class 3 when the true pattern is present, else the pixel sign
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # predict() finds the device from a parameter

        def forward(self, x):
            rows, cols = w.square()
            hit = (x[:, 0, rows, cols] == w.values("true")).flatten(1).all(1)
            out = torch.zeros(len(x), 5)
            out[torch.arange(len(x)), (x[:, 0, r, c] > 0).long()] = 1
            out[hit] = 0
            out[hit, 3] = 1
            return out

    x = torch.randn(200, 1, 28, 28)
    y = (x[:, 0, r, c] > 0).long()
    acc_null, acc_true, target = transferred_accuracies(Forced(), w, x, y)
    assert target == 3 and acc_true == 1.0 and acc_null == 1.0


def test_train_model_matches_config_and_seed():
    ds = data.load_classification("fashion_mnist", n_train=300, n_test=10, seed=0)
    cfg = Config.from_profile("smoke")
    a, _ = train_model(cfg, ds.x_train, ds.y_train, seed=3, wm=_wm(lam=22.2), epochs=0.5)
    b, _ = train_model(cfg, ds.x_train, ds.y_train, seed=3, wm=_wm(lam=22.2), epochs=0.5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.head.in_features == 36 * cfg.width


@pytest.mark.parametrize("kw,field", [({"n": 0}, "n="), ({"seeds": 0}, "seeds="), ({"stamp_fraction": 0}, "stamp_fraction="),
                                      ({"useful_drop": 1.5}, "useful_drop="), ({"lam": -1.0}, "lam="), ({"threshold": 1.5}, "threshold="),
                                      ({"pirate_fraction": 0}, "pirate_fraction="), ({"model": "vit"}, "model=")])
def test_config_rejects_bad_values(kw, field):
    with pytest.raises(ValueError, match=field):
        Config.from_profile("smoke", **kw)
