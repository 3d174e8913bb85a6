"""Tests for wm.models: shapes, the head/features contract and real behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wm import models

CLASSIFIERS = ("smallcnn", "resnet18", "vgg16", "mobilenet_v3_small")
INPUTS = ((1, 28), (3, 32))  # (channels, side): Fashion-MNIST-like and CIFAR-like


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


# ----------------------------------------------------------------------------- classifiers


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("channels,side", INPUTS)
def test_classifier_shapes_head_and_stem(name: str, channels: int, side: int) -> None:
    torch.manual_seed(0)
    model = models.build(name, in_channels=channels, num_classes=7).eval()
    x = torch.randn(2, channels, side, side)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    assert isinstance(model.head, nn.Linear)
    assert model.head.out_features == 7
    assert feats.shape == (2, model.head.in_features)
    # forward really is head(features): the contract transfer learning relies on.
    torch.testing.assert_close(model.head(feats), logits)
    stem = _first_conv(model)
    assert stem.in_channels == channels
    assert stem.stride == (1, 1)
    assert stem.kernel_size == (3, 3)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_swapping_head_changes_forward(name: str) -> None:
    torch.manual_seed(0)
    model = models.build(name).eval()
    model.head = nn.Linear(model.head.in_features, 3)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 3)
    # The old layer must not linger in the state dict under another name.
    old_shape = (10, model.head.in_features)
    assert not any(v.shape == old_shape for v in model.state_dict().values())


def test_resnet_has_no_initial_maxpool_and_vgg_keeps_spatial_size() -> None:
    resnet = models.resnet18()
    assert not any(isinstance(m, nn.MaxPool2d) for m in resnet.modules())
    # the ImageNet stem: torchvision's 7x7 stride-2 conv and max-pool, 28x28 -> 7x7 before layer1
    small = models.resnet18(stem="imagenet")
    assert small.backbone.conv1.kernel_size == (7, 7) and isinstance(small.backbone.maxpool, nn.MaxPool2d)
    with torch.no_grad():
        b = small.backbone.eval()
        x = b.maxpool(b.relu(b.bn1(b.conv1(torch.randn(1, 1, 28, 28)))))
    assert x.shape == (1, 64, 7, 7) and small(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="stem"):
        models.resnet18(stem="vit")
    vgg = models.vgg16()
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 3
    conv_body = vgg.backbone[0]
    with torch.no_grad():
        fmap = conv_body.eval()(torch.randn(1, 1, 28, 28))
    assert fmap.shape == (1, 512, 3, 3)
    assert models.vgg16(batch_norm=False)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_smallcnn_norm_option(norm: str) -> None:
    model = models.SmallCNN(norm=norm, width=8)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert has_bn == (norm == "batch")
    assert not any(isinstance(m, (nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)) for m in model.modules())
    with pytest.raises(ValueError):
        models.SmallCNN(norm="layer")


def test_smallcnn_without_norm_isolates_samples_in_train_mode() -> None:
    """A huge out-of-range sample must not change the others' outputs (BN-free)."""
    torch.manual_seed(0)
    clean = torch.rand(4, 1, 28, 28)
    poisoned = torch.cat([clean, 1e4 * torch.ones(1, 1, 28, 28)])
    free = models.SmallCNN(norm="none").train()
    torch.testing.assert_close(free(poisoned)[:4], free(clean))
    bn = models.SmallCNN(norm="batch").train()
    assert not torch.allclose(bn(poisoned)[:4], bn(clean), atol=1e-3)


def test_smallcnn_gradient_step_reduces_loss() -> None:
    torch.manual_seed(0)
    model = models.SmallCNN(width=16)
    x = torch.randn(32, 1, 28, 28)
    y = torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    loss0 = F.cross_entropy(model(x), y)
    for _ in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss1 = F.cross_entropy(model(x), y)
    assert loss1.item() < loss0.item() - 0.05


@pytest.mark.parametrize(
    "name,kwargs", [("smallcnn", {}), ("unet", {"width": 8, "depth": 2}), ("mobilenet_v3_small", {})]
)
def test_models_deterministic_given_seed(name: str, kwargs: dict) -> None:
    def make() -> nn.Module:
        torch.manual_seed(123)
        return models.build(name, **kwargs).eval()

    a, b = make(), make()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        assert torch.equal(va, vb)
    channels = 3 if name == "unet" else 1
    x = torch.randn(2, channels, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    torch.manual_seed(124)
    c = models.build(name, **kwargs)
    assert not all(torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))


# ----------------------------------------------------------------------------- image-to-image


@pytest.mark.parametrize("side", [32, 48])
@pytest.mark.parametrize("width,depth", [(8, 1), (8, 3), (16, 2), (4, 4)])
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_unet_shapes(side: int, width: int, depth: int, norm: str) -> None:
    if side % 2**depth:
        pytest.skip("size not divisible by 2**depth")
    model = models.UNet(in_channels=3, out_channels=2, width=width, depth=depth, norm=norm).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, side, side)).shape == (2, 2, side, side)


def test_unet_rejects_bad_size_and_bad_config() -> None:
    model = models.UNet(width=4, depth=3)
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.randn(1, 3, 36, 32))
    with pytest.raises(ValueError):
        models.UNet(in_channels=1, out_channels=3, residual=True)
    with pytest.raises(ValueError):
        models.UNet(depth=0)


@pytest.mark.parametrize(
    "cls,kwargs", [(models.UNet, {"width": 8, "depth": 2}), (models.ResNetI2I, {"width": 8, "n_blocks": 2}),
                   (models.ResNetI2I, {"width": 8, "n_blocks": 2, "n_down": 2})]
)
def test_residual_path(cls: type, kwargs: dict) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 4, 32, 32)
    model = cls(in_channels=4, out_channels=3, residual=True, **kwargs).eval()
    nn.init.zeros_(model.final.weight)
    nn.init.zeros_(model.final.bias)
    with torch.no_grad():
        torch.testing.assert_close(model(x), x[:, :3])
        # With a non-zero last layer the output is exactly body + input, i.e.
        # the residual variant differs from the plain one by the input.
        plain = cls(in_channels=4, out_channels=3, residual=False, **kwargs).eval()
        nn.init.normal_(model.final.weight, std=0.1)
        plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(x), plain(x) + x[:, :3])


@pytest.mark.parametrize("side", [32, 48, 30])
@pytest.mark.parametrize("width,n_blocks", [(8, 2), (16, 3)])
def test_resnet_i2i_shapes(side: int, width: int, n_blocks: int) -> None:
    model = models.ResNetI2I(width=width, n_blocks=n_blocks).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, side, side)).shape == (2, 3, side, side)
    blocks = [m for m in model.modules() if m.__class__.__name__ == "_ResBlock"]
    assert len(blocks) == n_blocks


@pytest.mark.parametrize("side", [16, 32, 48])
def test_resnet_i2i_pix2pix_layout(side: int) -> None:
    """n_down=2 is pix2pix's generator: the blocks run at 4x the width and a quarter of the side."""
    model = models.ResNetI2I(width=8, n_blocks=3, n_down=2).eval()
    seen = []
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        assert model(torch.randn(2, 3, side, side)).shape == (2, 3, side, side)
    assert seen == [(2, 32, side // 4, side // 4)]
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in model.modules()) == 2
    with pytest.raises(ValueError, match="n_down"):
        models.ResNetI2I(n_down=-1)


def test_resnet_i2i_default_is_resnet9() -> None:
    model = models.build("resnet_i2i")
    assert sum(m.__class__.__name__ == "_ResBlock" for m in model.modules()) == 9
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------- registry


def test_build_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        models.build("resnet50")


def test_count_parameters() -> None:
    lin = nn.Linear(5, 3)  # 15 weights + 3 biases
    assert models.count_parameters(lin) == 18
    lin.bias.requires_grad_(False)
    assert models.count_parameters(lin, trainable_only=True) == 15
    model = models.SmallCNN(width=32)
    assert models.count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert 50_000 < models.count_parameters(model) < 200_000
