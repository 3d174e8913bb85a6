"""wm.watermas: the key, the freeze, the sharpening hooks, the sharpness measurement, Uchida."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wm import data
from wm.models import SmallCNN, resnet18
from wm.keys import _subseed
from wm.train import TrainConfig, fit, seed_everything
from wm.watermas import (MODELS, Config, FreezeHook, Key, SharpnessHook, TartHook, UchidaHook, UchidaKey,
                         ber, build_model, default_uchida_layer, draw_key, draw_uchida_key, eligible_weights,
                         embed_values, extract, make_hooks, sharpness, train, uchida_ber)

SMALL_LAYERS = {"body.0.0.weight", "body.2.0.weight", "body.4.0.weight", "head.weight"}


def _model(width=4, seed=0):
    seed_everything(seed)
    return SmallCNN(in_channels=1, num_classes=10, width=width)


def _keyed(model, key):
    """The keyed weights of MODEL in key order."""
    params = dict(model.named_parameters())
    return torch.stack([params[n].detach().flatten()[i] for n, i in zip(key.names, key.indices)])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny, so a second intra-op thread buys nothing, and when the cores are
    busy with another job OpenMP's barriers make two threads ~70× slower (measured: 10 steps of
    a width-4 CNN, 0.06 s with one thread, 4.5 s with two). Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return data.load_classification("fashion_mnist", n_train=512, n_test=256, seed=0)


# ------------------------------------------------------------------------------------------ key


def test_key_positions_are_conv_linear_weights_spread_and_seeded():
    model = _model()
    key = draw_key(model, 300, seed=0)
    assert set(key.names) <= SMALL_LAYERS and len(key.layers()) >= 3
    assert len(set(zip(key.names, key.indices))) == 300
    assert draw_key(_model(), 300, seed=0) == key  # same architecture and seed: same key
    other = draw_key(model, 300, seed=1)
    assert set(zip(other.names, other.indices)) != set(zip(key.names, key.indices)) and other.bits != key.bits
    assert 0.3 < sum(key.bits) / 300 < 0.7
    # a network with BatchNorm and biases everywhere: still only conv/linear weights
    big = resnet18()
    kinds = {type(m) for m in big.modules()}
    assert nn.BatchNorm2d in kinds
    allowed = {n for n, _ in eligible_weights(big)}
    big_key = draw_key(big, 2000, seed=0)
    modules = dict(big.named_modules())
    assert set(big_key.names) <= allowed and len(big_key.layers()) >= 5
    assert all(isinstance(modules[n.rsplit(".", 1)[0]], (nn.Conv2d, nn.Linear)) and n.endswith(".weight")
               for n in big_key.layers())
    with pytest.raises(ValueError, match="n_bits"):
        draw_key(model, 10 ** 6, seed=0)


def test_value_rule_and_layer_restriction():
    model = _model()
    bits = [1, 0] * 20
    key = draw_key(model, 40, seed=3, kappa=2.0, bits=bits)
    assert list(key.bits) == bits
    params = dict(model.named_parameters())
    for name, b, v in zip(key.names, key.bits, key.values):
        sigma = params[name].detach().std().item()
        assert (v > 0) == (b == 1) and abs(abs(v) - 2.0 * sigma) < 1e-6 * sigma
    only = draw_key(model, 20, seed=0, layers=("head",))
    assert set(only.names) == {"head.weight"}
    with pytest.raises(ValueError, match="layers"):
        draw_key(model, 20, seed=0, layers=("body.0.1.weight",))  # a BatchNorm weight


def test_key_save_load_is_bit_identical(tmp_path):
    model = _model()
    key = draw_key(model, 100, seed=5, kappa=0.7)
    path = tmp_path / "key.json"
    key.save(path)
    loaded = Key.load(path)
    assert loaded == key and loaded.seed == 5 and loaded.kappa == 0.7
    a, b = _model(seed=9), _model(seed=9)
    embed_values(a, key)
    embed_values(b, loaded)
    assert torch.equal(_keyed(a, key), torch.tensor(key.values, dtype=torch.float32))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert "names" in path.read_text() and model.state_dict().keys().isdisjoint({"key"})  # apart from the model


def test_ber_after_embedding_clean_model_and_wrong_key():
    model = _model(width=8)
    key = draw_key(model, 512, seed=0)
    assert 0.35 < ber(model, key) < 0.65  # clean model: its signs know nothing of the bits
    embed_values(model, key)
    assert ber(model, key) == 0.0 and torch.equal(extract(model, key), key.bit_tensor())
    wrong = draw_key(model, 512, seed=1)
    assert 0.35 < ber(model, wrong) < 0.65


# ------------------------------------------------------------------------------------------ freeze


@pytest.mark.parametrize("method", ["freeze_only", "watermas", "tart"])
def test_keyed_weights_bit_identical_through_training(tiny, method):
    cfg = Config.from_profile("smoke", width=4)
    model = _model()
    key = draw_key(model, 64, seed=0)
    embed_values(model, key)
    before = copy.deepcopy(model)
    hooks = make_hooks(method, key, cfg)
    tc = TrainConfig(epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=5e-4, seed=0)
    fit(model, tiny.x_train[:320], tiny.y_train[:320], tc, hooks=hooks)  # 10 steps, channels_last
    assert torch.equal(_keyed(model, key), torch.tensor(key.values, dtype=torch.float32))
    assert ber(model, key) == 0.0
    for (name, p), q in zip(model.named_parameters(), before.parameters()):
        if name in key.names:  # the other weights of a host layer did move
            mask = torch.ones(p.numel(), dtype=torch.bool)
            mask[[i for n, i in zip(key.names, key.indices) if n == name]] = False
            assert not torch.equal(p.detach().flatten()[mask], q.detach().flatten()[mask]), name


def test_without_the_freeze_weight_decay_and_momentum_move_the_keyed_weights(tiny):
    model = _model()
    key = draw_key(model, 64, seed=0)
    embed_values(model, key)

    class MaskOnly(FreezeHook):  # gradient masking alone, values not written back
        def after_step(self, model):
            pass

    fit(model, tiny.x_train[:320], tiny.y_train[:320], TrainConfig(epochs=1, batch_size=32, seed=0),
        hooks=[MaskOnly(key)])
    assert not torch.equal(_keyed(model, key), torch.tensor(key.values, dtype=torch.float32))


# ------------------------------------------------------------------------------------------ sharpening


def _main_pass(model, hook, x, y):
    """What fit does before after_backward: forward, the hook's extra_loss, backward."""
    model.train()
    out = model(x)
    loss = F.cross_entropy(out, y)
    assert hook.extra_loss(model, x, y, out) is None
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _grads_at(model, key, deltas, x, y):
    """Σ over DELTAS of the gradient of CE at the model with its keyed weights moved by delta."""
    total = None
    for delta in deltas:
        m = copy.deepcopy(model)
        params = dict(m.named_parameters())
        with torch.no_grad():
            for k, (n, i) in enumerate(zip(key.names, key.indices)):
                params[n].view(-1)[i] += delta[k]
        m.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        g = {n: p.grad.clone() for n, p in m.named_parameters()}
        total = g if total is None else {n: total[n] + g[n] for n in g}
    return total


def _keyed_mask(model, key):
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for n, i in zip(key.names, key.indices):
        masks[n].view(-1)[i] = True
    return masks


def _check_hook_step(model, key, hook, deltas_of, coef_main, coef_extra, x, y):
    g = _main_pass(model, hook, x, y)
    snapshot = copy.deepcopy(model)  # weights and BatchNorm running statistics after the main pass
    g_k = torch.stack([g[n].view(-1)[i] for n, i in zip(key.names, key.indices)])
    extra = _grads_at(snapshot, key, deltas_of(g_k), x, y)
    hook.after_backward(model)
    masks = _keyed_mask(model, key)
    for name, p in model.named_parameters():
        expected = coef_main * g[name] + coef_extra * extra[name]
        expected[masks[name]] = 0
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6, msg=name)
        assert not p.grad[masks[name]].any()  # keyed gradients are zero
    # weights restored exactly, running statistics updated once (by the main pass) only
    for (name, a), b in zip(model.state_dict().items(), snapshot.state_dict().values()):
        assert torch.equal(a, b), name


def test_sharpness_hook_gradient_is_the_sam_style_combination(tiny):
    model = _model()
    key = draw_key(model, 64, seed=0)
    embed_values(model, key)
    rho, lam = 0.05, 0.5
    hook = SharpnessHook(key, rho=rho, lam=lam, max_sharpness=None)
    x, y = tiny.x_train[:16], tiny.y_train[:16]
    _check_hook_step(model, key, hook, lambda g_k: [rho * g_k / g_k.norm()], 1 + lam, -lam, x, y)
    stats = hook.stats()
    assert stats["steps"] == 1 and stats["skipped"] == 0 and stats["mean_gap"] > 0  # S_K > 0 along ε_K


def test_tart_hook_gradient_is_the_replica_combination(tiny):
    model = _model()
    key = draw_key(model, 64, seed=0)
    embed_values(model, key)
    lam, noise, reps = 0.5, 0.5, 2
    hook = TartHook(key, replicas=reps, noise=noise, lam=lam, seed=4)
    twin = torch.Generator().manual_seed(_subseed(4, "tart-noise"))  # the hook's own noise stream
    std = noise * torch.tensor(key.values).abs()
    deltas = [torch.randn(std.shape, generator=twin) * std for _ in range(reps)]  # key order = group order here
    x, y = tiny.x_train[:16], tiny.y_train[:16]
    _check_hook_step(model, key, hook, lambda g_k: deltas, 1.0, -lam / reps, x, y)


def test_sharpness_cap_drops_the_term(tiny):
    model = _model()
    key = draw_key(model, 64, seed=0)
    embed_values(model, key)
    hook = SharpnessHook(key, rho=0.05, lam=0.5, max_sharpness=1e-9)  # S_K > 0 always exceeds it
    x, y = tiny.x_train[:16], tiny.y_train[:16]
    _check_hook_step(model, key, hook, lambda g_k: [0 * g_k], 1.0, 0.0, x, y)  # plain gradient
    assert hook.stats()["skipped"] == 1


def test_extra_pass_replays_the_dropout_masks():
    seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    key = draw_key(model, 32, seed=0)
    embed_values(model, key)
    hook = SharpnessHook(key, rho=1e-6, lam=1.0)  # g_pert ≈ g when the masks match
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    hook.after_step(model)  # as at the end of a previous step: saves the random state
    g = _main_pass(model, hook, x, y)
    state = torch.get_rng_state()
    hook.after_backward(model)
    assert torch.equal(torch.get_rng_state(), state)  # the global random stream is untouched
    masks = _keyed_mask(model, key)
    for name, p in model.named_parameters():
        expected = g[name].clone()
        expected[masks[name]] = 0
        torch.testing.assert_close(p.grad, expected, rtol=1e-3, atol=1e-5)


def test_sharpness_measurement(tiny):
    cfg = Config.from_profile("smoke", width=4, n_bits=64)
    model, key, _ = train(cfg, "freeze_only", tiny.x_train, tiny.y_train, seed=0, epochs=1)
    state = copy.deepcopy(model.state_dict())
    model.train()
    s = sharpness(model, key, tiny.x_test, tiny.y_test, rho=0.05, n_random=4, seed=0, batch_size=100)
    assert set(s) == {"sam", "random", "base_loss"} and 0 < s["base_loss"] < 3
    assert s["sam"] > 0 and s["sam"] >= s["random"] - 1e-4  # the worst direction beats random ones
    assert abs(s["random"]) < s["sam"]
    bigger = sharpness(model, key, tiny.x_test, tiny.y_test, rho=0.2, n_random=4)
    assert bigger["sam"] > s["sam"]
    assert model.training and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), state.values()))


# ------------------------------------------------------------------------------------------ Uchida


def test_uchida_embeds_its_bits_and_a_clean_model_does_not_carry_them(tiny):
    model = _model(width=8)
    ukey = draw_uchida_key(model, 32, seed=0)
    assert ukey.layer == "body.2.0.weight" and ukey.X.shape == (32, 8 * 9)
    assert uchida_ber(model, ukey) > 0.2
    fit(model, tiny.x_train, tiny.y_train, TrainConfig(epochs=4, batch_size=32, seed=0), hooks=[UchidaHook(ukey)])
    assert uchida_ber(model, ukey) == 0.0
    assert uchida_ber(_model(width=8, seed=1), ukey) > 0.2
    # the default host layer can hold the bits: MobileNet's second conv is depthwise (M = 9)
    mobile = build_model("mobilenet_v3_small")
    assert dict(mobile.named_parameters())[default_uchida_layer(mobile, 64)][0].numel() >= 64


# ------------------------------------------------------------------------------------------ config, models, train


def test_train_methods_and_determinism(tiny):
    cfg = Config.from_profile("smoke", width=4, n_bits=32, uchida_bits=8)
    x, y = tiny.x_train[:128], tiny.y_train[:128]
    a, key, hist = train(cfg, "freeze_only", x, y, seed=2, epochs=0.5)
    b, key_b, _ = train(cfg, "freeze_only", x, y, seed=2, epochs=0.5)
    assert key == key_b and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert ber(a, key) == 0.0 and hist.samples == 128  # one step of the smoke batch size
    clean, clean_key, _ = train(cfg, "none", x, y, seed=2, epochs=0.5)
    assert clean_key == key and ber(clean, key) > 0.1  # the same key, never written: the control
    _, ukey, _ = train(cfg, "uchida", x, y, seed=2, epochs=0.5)
    assert isinstance(ukey, UchidaKey) and len(ukey.bits) == 8
    with pytest.raises(ValueError, match="method"):
        train(cfg, "sam", x, y, seed=0)
    assert [type(h) for h in make_hooks("watermas", key, cfg)] == [SharpnessHook]
    assert make_hooks("none", key, cfg) == []
    with pytest.raises(TypeError):
        make_hooks("uchida", key, cfg)


def test_build_model_shapes():
    cfg = Config.from_profile("smoke")
    x = torch.randn(2, 1, 28, 28)
    for name in ("smallcnn", "swin_t"):
        model = build_model(name, cfg).eval()
        assert model(x).shape == (2, 10) and isinstance(model.head, nn.Linear)
    assert set(MODELS) >= {"resnet18", "vgg16", "mobilenet_v3_small"}
    with pytest.raises(ValueError, match="model"):
        build_model("vit", cfg)


def test_profiles_are_valid():
    for profile in ("smoke", "cpu", "gpu"):
        cfg = Config.from_profile(profile)
        assert cfg.profile == profile and all(m in MODELS for m in cfg.models)
    cpu = Config.from_profile("cpu")
    assert cpu.budget("smallcnn") == (30000, 3, 2000) and cpu.budget("resnet18") == (8000, 2, 2000)
    # the cpu profile's ResNet-18 keeps torchvision's stem (stride 4 before layer1), the gpu one the CIFAR stem
    assert build_model("resnet18", cpu).backbone.conv1.stride == (2, 2)
    assert build_model("resnet18", Config.from_profile("gpu")).backbone.conv1.stride == (1, 1)


@pytest.mark.parametrize("kw,field", [({"n_bits": 0}, "n_bits="), ({"kappa": 0.0}, "kappa="), ({"rho": -0.1}, "rho="),
                                      ({"lam": -1.0}, "lam="), ({"models": ("vit",)}, "models="),
                                      ({"tart_replicas": 0}, "tart_replicas="), ({"tart_noise": 0}, "tart_noise="),
                                      ({"max_sharpness": -1.0}, "max_sharpness="), ({"quant_bits": (0,)}, "quant_bits="),
                                      ({"prune_amounts": (1.5,)}, "prune_amounts="), ({"seeds": 0}, "seeds="),
                                      ({"large_n_train": 10 ** 6}, "large_n_train="), ({"large_n_test": 0}, "large_n_test="), ({"payloads": ()}, "payloads="),
                                      ({"uchida_lam": 0}, "uchida_lam="), ({"tart_lam": 1.0}, "tart_lam="), ({"finetune_fraction": 0}, "finetune_fraction=")])
def test_config_rejects_bad_values(kw, field):
    with pytest.raises(ValueError, match=field):
        Config.from_profile("smoke", **kw)


# ------------------------------------------------------------------------------------------ security


@pytest.mark.parametrize("mode,expected", [("flip", 1.0), ("zero", None), ("random", None)])
def test_overwrite_with_the_key(mode, expected):
    from wm.watermas import overwrite
    model = _model()
    key = draw_key(model, 200, seed=1)
    embed_values(model, key)
    before = copy.deepcopy(model.state_dict())
    attacked = overwrite(model, key, mode, seed=0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # input untouched
    moved = _keyed(attacked, key)
    if mode == "flip":
        assert ber(attacked, key) == expected and torch.equal(moved, -_keyed(model, key))
    elif mode == "zero":
        assert torch.count_nonzero(moved) == 0
        assert ber(attacked, key) == pytest.approx(sum(key.bits) / len(key))  # zeros read as 0: the 1 bits are wrong
    else:
        assert 0.35 < ber(attacked, key) < 0.65
    # nothing outside the key moved
    params, orig = dict(attacked.named_parameters()), dict(model.named_parameters())
    for name in params:
        diff = (params[name] != orig[name]).sum().item()
        assert diff <= sum(1 for n in key.names if n == name)


# ------------------------------------------------------------------------------------------ segmentation


def _fake_voc(root, n_train=6, n_val=3, size=40):
    """A tiny data set in PASCAL VOC layout: JPEG images, palette PNG masks with 255 borders."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    names = [f"img{i:03d}" for i in range(n_train + n_val)]
    for name in names:
        mask = np.zeros((size, size), np.uint8)
        c = int(rng.integers(1, 21))
        mask[10:30, 10:30] = c
        mask[9, 9:31] = 255  # a VOC border: ignored
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        img[mask == c] = [200, 10 * c, 50]
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg")
        pal = Image.fromarray(mask, mode="P")
        pal.putpalette([v for i in range(256) for v in (i, i, i)])
        pal.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names[:n_train]))
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names[n_train:]))


def test_voc_loading_and_errors(tmp_path, monkeypatch):
    _fake_voc(tmp_path / "VOC")
    seg = data.load_segmentation(tmp_path / "VOC", size=32)
    assert seg.x_train.shape == (6, 3, 32, 32) and seg.y_val.shape == (3, 32, 32) and seg.num_classes == 21
    assert (seg.y_train == data.IGNORE_INDEX).any() and seg.y_train.max() <= 20
    monkeypatch.setenv("WM_SEGMENTATION", str(tmp_path / "VOC"))
    assert data.segmentation_root() == tmp_path / "VOC"
    (tmp_path / "VOC" / "SegmentationClass" / "img000.png").unlink()
    with pytest.raises(data.DataError, match="img000"):
        data.load_segmentation(tmp_path / "VOC", size=32)
    monkeypatch.setenv("WM_SEGMENTATION", str(tmp_path))
    with pytest.raises(data.DataError, match="WM_SEGMENTATION"):
        data.segmentation_root()


def test_cityscapes_layout_maps_label_ids(tmp_path):
    import numpy as np
    from PIL import Image
    for split in ("train", "val"):
        (tmp_path / "leftImg8bit" / split / "aachen").mkdir(parents=True)
        (tmp_path / "gtFine" / split / "aachen").mkdir(parents=True)
        Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(tmp_path / "leftImg8bit" / split / "aachen" / "a_0_leftImg8bit.png")
        ids = np.full((16, 32), 7, np.uint8)  # road → train id 0
        ids[:, :8] = 26  # car → 13
        ids[:2] = 0  # unlabeled → ignored
        Image.fromarray(ids).save(tmp_path / "gtFine" / split / "aachen" / "a_0_gtFine_labelIds.png")
    seg = data.load_segmentation(tmp_path, size=16)
    assert seg.num_classes == 19
    assert set(seg.y_train.unique().tolist()) == {data.IGNORE_INDEX, 0, 13}


def test_deeplab_watermarked_on_generated_voc(tmp_path):
    from wm.metrics import segmentation_scores
    from wm.watermas import train_segmentation
    _fake_voc(tmp_path / "VOC")
    seg = data.load_segmentation(tmp_path / "VOC", size=32)
    cfg = Config.from_profile("smoke", n_bits=64, seg_epochs=2)
    model, key, _ = train_segmentation(cfg, "watermas", seg, seed=0)
    assert ber(model, key) == 0.0
    acc, miou = segmentation_scores(model, seg.x_val, seg.y_val, seg.num_classes)
    assert 0 <= acc <= 1 and 0 <= miou <= 1
    clean, ckey, _ = train_segmentation(cfg, "none", seg, seed=0)
    assert 0.3 < ber(clean, ckey) < 0.7
