"""wm.image_processing: watermark images, rain, the networks, training, extraction, spread spectrum."""

import math

import numpy as np
import pytest
import torch

from wm import data, metrics
from wm import image_processing as ip
from wm import train


def test_shipped_logo_is_the_drawn_one():
    logo = ip.load_logo()
    assert logo.shape == (128, 128) and np.array_equal(logo, ip.make_logo(128))
    assert 0.3 < (logo > 127).mean() < 0.9  # mostly white, with dark strokes


def test_missing_logo_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="logo"):
        ip.load_logo(tmp_path / "nope.png")


def test_watermark_images():
    for name in ip.WATERMARKS:
        d = ip.watermark_image(name, 32)
        assert d.shape == (1, 32, 32) and 0 <= d.min() and d.max() <= 1 and d.std() > 0.2
    qr = ip.qr_pattern(32, seed=3)
    assert set(np.unique(qr)) == {0, 255} and np.array_equal(qr, ip.qr_pattern(32, seed=3))
    assert not np.array_equal(qr, ip.qr_pattern(32, seed=4))
    with pytest.raises(ValueError, match="watermark"):
        ip.watermark_image("flower", 32)


def test_rain_is_deterministic_and_only_brightens():
    clean = torch.rand(6, 3, 32, 32) * 0.8
    a = ip.add_rain(clean, seed=1)
    assert torch.equal(a, ip.add_rain(clean, seed=1)) and not torch.equal(a, ip.add_rain(clean, seed=2))
    assert (a >= clean - 1e-6).all() and a.max() <= 1
    changed = (a - clean).abs() > 0.02
    assert 0.02 < changed.float().mean() < 0.6  # streaks cover part of the image, not all of it
    # streaks are lines: a changed pixel has changed neighbours along the streak
    assert metrics.psnr(a, clean).mean() < 35


def test_deliver_is_8_bit():
    x = torch.rand(2, 3, 8, 8) * 1.2 - 0.1
    y = ip.deliver(x)
    assert y.min() >= 0 and y.max() <= 1 and torch.allclose(y * 255, (y * 255).round())


def test_photo_split_is_by_image():
    imgs = [np.full((40, 40, 3), i, np.uint8) for i in range(5)]
    owner, attacker = ip.split_photos(imgs)
    assert len(owner) == 3 and len(attacker) == 2
    assert not {int(i[0, 0, 0]) for i in owner} & {int(i[0, 0, 0]) for i in attacker}
    with pytest.raises(data.DataError, match="at least 2"):
        ip.split_photos(imgs[:1])


def test_pairs_from_photos_are_aligned():
    imgs = [np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)]
    p = ip.make_pairs(imgs, 10, 16, seed=0, rain={}, device="cpu")
    assert p.a.shape == p.clean.shape == (10, 3, 16, 16) and len(p) == 10
    assert (p.a >= p.clean - 1 / 255).all()  # rain only adds light (up to 8-bit rounding)


def test_networks_keep_shapes_and_start_as_identity():
    b = torch.rand(4, 3, 16, 16)
    delta = ip.watermark_image("logo", 16)
    h = ip.Embedder(width=8)
    assert torch.allclose(h(b, delta), b)  # zero-initialised correction: B′ = B at the start
    r = ip.DilatedResNet(3, 1, width=8, blocks=3)
    out = r(b)
    assert out.shape == (4, 1, 16, 16) and 0 <= out.min() and out.max() <= 1
    for arch in ip.SM_ARCHS:  # residual surrogates start as the identity
        assert torch.allclose(ip.build_surrogate(arch, 8)(b), b)
    assert ip.PatchDiscriminator(3, 8, layers=3)(b).shape == (4, 1, 2, 2)
    with pytest.raises(ValueError, match="architecture"):
        ip.build_surrogate("vit", 8)


def test_the_resnet_surrogates_layout_and_norm_are_what_they_say():
    b = torch.rand(2, 3, 16, 16)
    for layout in ip.RESNET_LAYOUTS:
        for norm in ip.RESNET_NORMS:
            net = ip.build_surrogate("resnet9", 8, layout, norm)
            assert torch.allclose(net(b), b)  # still the identity at the start
            strided = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
            assert len(strided) == (2 if layout == "pix2pix" else 0)
            norms = {type(m).__name__ for m in net.modules() if "Norm" in type(m).__name__}
            assert norms == ({"BatchNorm2d"} if norm == "batch" else {"InstanceNorm2d"})
    with pytest.raises(ValueError, match="layout"):
        ip.build_surrogate("resnet9", 8, "pix2pixhd")
    with pytest.raises(ValueError, match="norm"):
        ip.build_surrogate("resnet16", 8, norm="layer")
    with pytest.raises(ValueError, match="no layout or norm"):  # a U-Net would silently ignore them
        ip.build_surrogate("unet", 8, norm="instance")


def test_train_i2i_learns_a_mapping_and_checks_its_loss():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16) * 0.8
    y = x + 0.1  # a brightness shift
    net = ip.build_surrogate("unet", 8)
    before = torch.nn.functional.mse_loss(ip.apply(net, x), y).item()
    hist = ip.train_i2i(net, x, y, "l2", epochs=15, lr=3e-3, batch=16, seed=0)
    after = torch.nn.functional.mse_loss(ip.apply(net, x), y).item()
    assert after < before / 5 and len(hist.loss) == 15
    ip.train_i2i(ip.build_surrogate("unet", 8), x, y, "l1_adv", epochs=1, lr=1e-3, batch=16, seed=0, adv_weight=1e-3, d_width=8)
    with pytest.raises(ValueError, match="loss"):
        ip.train_i2i(net, x, y, "huber", 1, 1e-3, 16, 0)
    with pytest.raises(ValueError, match="VGG"):
        ip.train_i2i(net, x, y, "perc_adv", 1, 1e-3, 16, 0)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unet", "resnet9"])
def test_every_null_architecture_trains_into_a_working_deraining_model(arch):
    """An independent model of the null population must be a working model: with L1 a ResNet-9
    never left the identity (the rainy inputs' PSNR to 0.001 dB), hence ip.TARGET_LOSS."""
    torch.set_num_threads(1)
    cfg = ip.Config.from_profile("smoke", size=16, m_width=8, m_epochs=4, batch_size=16)
    owner, _ = ip.split_photos(data.photos("train"))
    pairs = ip.make_pairs(owner, 256, 16, 0, cfg.rain, "cpu")
    net, _ = ip.train_target(cfg, pairs, seed=200, arch=arch)
    rainy = ip.image_quality(pairs.a, pairs.clean)["psnr"]
    assert ip.image_quality(ip.apply(net, pairs.a), pairs.clean)["psnr"] > rainy + 1.0


def test_instance_norm_is_torchs_affine_instance_norm():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 12, 12) * 3 + 1
    ours, theirs = ip.InstanceNorm(8), torch.nn.InstanceNorm2d(8, affine=True)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2), ours.bias.uniform_(-1, 1)
    theirs.load_state_dict(ours.state_dict())  # the same parameter names
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    assert torch.allclose(ours(x.contiguous(memory_format=torch.channels_last)), theirs(x), atol=1e-5)


def test_speed_picks_precision_and_memory_format(monkeypatch):
    h, r = ip.Embedder(8), ip.DilatedResNet(3, 1, 8, 2)
    fp32 = train.Precision(torch.device("cpu"), amp=False)
    assert not fp32.bf16
    assert fp32.layout(h) == fp32.layout(r) == torch.channels_last  # oneDNN's convolutions prefer it
    monkeypatch.setattr(train, "bf16_native", lambda device: True)
    bf16 = train.Precision(torch.device("cpu"), amp=True)
    assert bf16.bf16 and not train.Precision(torch.device("cpu"), amp=False).bf16
    assert bf16.layout(h) == torch.channels_last  # BatchNorm U-Net
    assert bf16.layout(r) == torch.contiguous_format  # instance norm: NCHW under bf16
    assert r.stem[0][0].weight.is_contiguous()
    with bf16.autocast():
        assert r(torch.rand(2, 3, 16, 16)).dtype == torch.bfloat16
    monkeypatch.setattr(train, "bf16_native", lambda device: False)
    assert not train.Precision(torch.device("cpu"), amp=True).bf16  # no native bf16: fp32 whatever amp says


def test_train_i2i_stays_fp32_whatever_the_device(monkeypatch):
    monkeypatch.setattr(train, "bf16_native", lambda device: True)
    seen = []
    net = ip.build_surrogate("unet", 8)
    net.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.rand(32, 3, 16, 16)
    ip.train_i2i(net, x, x, "l2", epochs=1, lr=1e-3, batch=16, seed=0)
    assert seen and set(seen) == {torch.float32}


@pytest.mark.parametrize("amp", [True, False])
def test_stage1_trains_in_the_precision_amp_asks_for(monkeypatch, amp):
    monkeypatch.setattr(train, "bf16_native", lambda device: True)
    seen = []
    cfg = ip.Config.from_profile("smoke", n_owner=32, stage1_epochs=1, batch_size=16, amp=amp)
    wmk = ip.new_watermark(cfg, "cpu")
    wmk.r.final.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    b = torch.rand(32, 3, cfg.size, cfg.size)
    ip.train_stage1(cfg, wmk, b, b, seed=0)
    assert set(seen) == {torch.bfloat16 if amp else torch.float32}
    assert wmk.extract(b).dtype == torch.float32  # evaluation is fp32


def test_perceptual_loads_a_local_vgg19_checkpoint(tmp_path, monkeypatch):
    from torchvision.models import vgg
    features = vgg.make_layers(vgg.cfgs["E"])[:ip.Perceptual.LAYERS]
    path = tmp_path / ip.VGG_FILE
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    monkeypatch.setenv("WM_VGG_WEIGHTS", str(path))
    assert ip.vgg_path() == path
    perc = ip.Perceptual(path)
    x = torch.rand(2, 3, 16, 16)
    assert perc(x, x).item() == 0 and perc(x, x.flip(-1)).item() > 0
    assert torch.equal(perc.features[0].weight, features[0].weight)
    torch.save({"features.0.weight": features[0].weight}, path)
    with pytest.raises(data.DataError, match="VGG-19"):
        ip.Perceptual(path)
    monkeypatch.setenv("WM_VGG_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(data.DataError, match="WM_VGG_WEIGHTS"):
        ip.vgg_path()


def test_extraction_scores_and_success_rate():
    delta = ip.watermark_image("logo", 16)
    wmk = ip.DeepWatermark(ip.Embedder(8), ip.DilatedResNet(3, 1, 8, 2), delta)

    class Perfect(torch.nn.Module):  # returns δ for bright images, the blank otherwise
        def forward(self, x):
            bright = (x.mean((1, 2, 3)) > 0.5).view(-1, 1, 1, 1)
            return torch.where(bright, delta.expand(len(x), 1, 16, 16), torch.ones(len(x), 1, 16, 16))
    wmk.r = Perfect()
    x = torch.cat([torch.full((3, 3, 16, 16), 0.9), torch.full((1, 3, 16, 16), 0.1)])
    e = ip.verify(wmk, x, tau=0.9)
    assert np.allclose(e.nc[:3], 1) and e.nc[3] == 0  # the constant blank has no centred correlation
    assert e.nc_raw[3] > 0.5  # …but a high uncentred one: why success is judged on the centred NC
    assert e.success_rate == 0.75 and e.metrics()["success_rate"] == 0.75


def test_spread_spectrum_embeds_at_its_psnr_and_decodes_blind():
    gen = torch.Generator().manual_seed(0)
    b = torch.nn.functional.avg_pool2d(torch.rand(20, 3, 36, 36, generator=gen), 5, 1)  # smooth-ish hosts, 32×32
    for bits in (16, 64):
        ss = ip.SpreadSpectrum.create(bits, 32, psnr=30.0, seed=0)
        marked = ss.embed(b)
        assert abs(metrics.psnr(marked, b).mean() - 30.0) < 1.0
        assert ss.bit_accuracy(marked) > 0.95
        assert abs(ss.bit_accuracy(b) - 0.5) < 0.2  # the clean host carries no message
    again = ip.SpreadSpectrum.create(16, 32, 30.0, seed=0)
    assert torch.equal(again.patterns, ss.patterns if len(ss.bits) == 16 else again.patterns)
    assert ss.alpha == pytest.approx(10 ** (-30 / 20))


def test_tv_denoising_removes_noise():
    clean = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 20, 20), 5, 1)
    noisy = ip.add_noise(clean, 0.08, seed=0)
    assert torch.equal(noisy, ip.add_noise(clean, 0.08, seed=0))
    assert metrics.psnr(ip.tv_denoise(noisy, 0.1), clean).mean() > metrics.psnr(noisy, clean).mean() + 2


def test_stage1_learns_to_separate_marked_from_clean():
    torch.manual_seed(0)
    cfg = ip.Config.from_profile("smoke", n_owner=64, stage1_epochs=25, batch_size=16, lr=2e-3, w_basic=1e4)
    b = torch.nn.functional.avg_pool2d(torch.rand(64, 3, 20, 20), 5, 1)
    a = ip.add_rain(b, seed=0)
    wmk = ip.new_watermark(cfg, "cpu")
    hist = ip.train_stage1(cfg, wmk, a, b, seed=0)
    assert hist.loss[-1] < hist.loss[0]
    marked = ip.verify(wmk, wmk.embed(b), cfg.tau)
    clean = ip.verify(wmk, b, cfg.tau)
    assert marked.nc.mean() > clean.nc.mean() + 0.3


@pytest.mark.parametrize("kw,field", [({"size": 20}, "size="), ({"batch_size": 15}, "batch_size="),
                                      ({"watermark": "flower"}, "watermark="), ({"sm_archs": ("vit",)}, "sm_archs="),
                                      ({"sm_losses": ("huber",)}, "sm_losses="), ({"tau": 1.0}, "tau="),
                                      ({"ss_bits": (0,)}, "ss_bits="), ({"n_owner": 4}, "n_owner="),
                                      ({"rain_density": 0}, "rain_density="), ({"ss_psnr": -1.0}, "ss_psnr="),
                                      ({"amp": "yes"}, "amp=")])
def test_bad_parameters_fail_early(kw, field):
    with pytest.raises(ValueError, match=field):
        ip.Config.from_profile("cpu", **kw)


def test_profiles_are_valid():
    for profile in ("smoke", "cpu", "gpu"):
        cfg = ip.Config.from_profile(profile)
        assert cfg.profile == profile and cfg.size % 8 == 0 and cfg.batch_size % 2 == 0
    assert math.isclose(ip.Config.from_profile("cpu").tau, 0.9)
