"""Image-to-image networks: the U-Net and residual restorers (M, H's body, the surrogates), Zhang
et al.'s extractor R (a dilated residual network, also the CEILNet-like surrogate), the PatchGAN
discriminator D and the embedder H, the surrogates' builder (`build_surrogate`), the LSGAN and
perceptual (VGG-19) losses, and the segmentation network of the WaterMAS study. All are created
with random weights (the perceptual loss loads a local VGG-19 file when one is present)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from wm import data
from wm.layers import _check_choice, _conv_norm_relu, _init_relu_convs, _norm2d


def _check_residual(in_channels: int, out_channels: int, residual: bool) -> None:
    if residual and out_channels > in_channels:
        raise ValueError(
            f"residual=True adds the first out_channels={out_channels} input channels to the output, "
            f"but the input has only in_channels={in_channels}"
        )


class _Up(nn.Module):
    """Bilinear x2 up-sampling + 3x3 conv, concatenation with the skip, double conv.

    Bilinear + conv instead of a transposed conv: transposed convs produce
    checkerboard artifacts (Odena et al., 2016), a periodic high-frequency
    pattern that in a watermarking study is indistinguishable from, and would
    contaminate, an embedded signal.
    """

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.reduce = _conv_norm_relu(c_in, c_out, norm)
        self.block = nn.Sequential(_conv_norm_relu(2 * c_out, c_out, norm), _conv_norm_relu(c_out, c_out, norm))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.reduce(self.up(x))
        return self.block(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """U-Net for image-to-image tasks.

    * ``depth`` down/up levels; level ``i`` has ``width * 2**i`` channels
      (width 32, depth 3: 32, 64, 128, 256 at the bottleneck).
    * Each block: two (3x3 conv + norm + ReLU).
    * Down-sampling: 2x2 max-pool (parameter-free, as in the original U-Net).
    * Up-sampling: bilinear x2 + 3x3 conv (no checkerboard artifacts), then
      concatenation with the encoder feature map of the same size.
    * Output: a 1x1 conv ``self.final`` with no activation; the caller decides
      whether to clamp to the image range.
    * ``norm``: ``"batch"`` (default), ``"instance"`` or ``"none"``. BatchNorm
      by default because InstanceNorm normalises away each image's mean and
      contrast, information an embedding or restoration network must
      reproduce exactly; the studies train with batches of 8 or more, where
      BatchNorm statistics are stable.
    * ``residual=True``: the output is ``final(...) + x[:, :out_channels]``,
      so the network learns a correction (rain streaks to remove, an
      invisible watermark residual to add); with ``final`` zero-initialised it
      starts as the identity.

    Inputs must have H and W divisible by ``2**depth`` (ValueError otherwise),
    so that every up-sampled map matches its skip connection exactly.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        width: int = 32,
        depth: int = 3,
        residual: bool = False,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"UNet depth must be >= 1; got {depth}")
        _check_residual(in_channels, out_channels, residual)
        _check_choice(norm, ("batch", "instance", "none"), "UNet norm")
        self.depth = depth
        self.residual = residual
        self.out_channels = out_channels
        chs = [width * 2**i for i in range(depth + 1)]
        self.inc = nn.Sequential(_conv_norm_relu(in_channels, chs[0], norm), _conv_norm_relu(chs[0], chs[0], norm))
        self.pool = nn.MaxPool2d(2)
        self.downs = nn.ModuleList(
            nn.Sequential(_conv_norm_relu(chs[i], chs[i + 1], norm), _conv_norm_relu(chs[i + 1], chs[i + 1], norm))
            for i in range(depth)
        )
        # ups[0] goes from the bottleneck (level depth) to level depth - 1.
        self.ups = nn.ModuleList(_Up(chs[i + 1], chs[i], norm) for i in reversed(range(depth)))
        self.final = nn.Conv2d(chs[0], out_channels, kernel_size=1)
        _init_relu_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        factor = 2**self.depth
        if h % factor or w % factor:
            raise ValueError(
                f"UNet with depth={self.depth} needs H and W divisible by {factor}; got {h}x{w} "
                "(pad or crop the input)"
            )
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        out = self.final(y)
        if self.residual:
            out = out + x[:, : self.out_channels]
        return out


class _ResBlock(nn.Module):
    """pix2pix ResNet block: x + (conv-norm-ReLU-conv-norm)(x), reflect padding."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_norm_relu(channels, channels, norm, padding_mode="reflect"),
            nn.Conv2d(channels, channels, 3, padding=1, bias=(norm == "none"), padding_mode="reflect"),
            _norm2d(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetI2I(nn.Module):
    """Residual image-to-image network in the style of pix2pix's ResNet generator.

    Layout: 7x7 conv (in -> width) + norm + ReLU, ``n_blocks`` residual
    blocks of width ``width``, 7x7 conv ``self.final`` (width -> out), no
    output activation (pix2pix uses tanh for [-1, 1] images; the studies use
    [0, 1] images and residual outputs, so clamping is left to the caller).
    ResNet-9 is ``n_blocks=9``, ResNet-16 ``n_blocks=16``.

    ``n_down`` stride-2 3x3 convs (width doubling each time) come after the
    stem and as many 3x3 stride-2 transposed convs (halving it) before the
    final conv: ``n_down=2`` is pix2pix's ``resnet_9blocks`` /
    ``resnet_16blocks`` layout exactly (blocks at 4x width, quarter
    resolution; H and W must be multiples of 4). ``n_down=0`` (the default)
    runs everything at FULL resolution, with a receptive field of
    7 + 4 * n_blocks + 6 pixels (49 px for ResNet-9) and no divisibility
    constraint. Convolutions use reflect padding as in pix2pix, which needs
    H, W >= 4.

    ``norm`` and ``residual`` behave as in ``UNet``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        width: int = 64,
        n_blocks: int = 9,
        residual: bool = False,
        norm: str = "batch",
        n_down: int = 0,
    ) -> None:
        super().__init__()
        _check_residual(in_channels, out_channels, residual)
        _check_choice(norm, ("batch", "instance", "none"), "ResNetI2I norm")
        if not isinstance(n_down, int) or n_down < 0:
            raise ValueError(f"ResNetI2I n_down must be an integer >= 0, got {n_down!r}")
        self.residual = residual
        self.out_channels = out_channels
        bias = norm == "none"
        layers = [
            nn.Conv2d(in_channels, width, 7, padding=3, bias=bias, padding_mode="reflect"),
            _norm2d(norm, width),
            nn.ReLU(inplace=True),
        ]
        for i in range(n_down):
            c = width * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), _norm2d(norm, 2 * c), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*layers)
        inner = width * 2**n_down
        self.blocks = nn.Sequential(*(_ResBlock(inner, norm) for _ in range(n_blocks)))
        up = []
        for i in reversed(range(n_down)):
            c = width * 2 ** (i + 1)
            up += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                   _norm2d(norm, c // 2), nn.ReLU(inplace=True)]
        self.up = nn.Sequential(*up)
        self.final = nn.Conv2d(width, out_channels, 7, padding=3, padding_mode="reflect")
        _init_relu_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.final(self.up(self.blocks(self.stem(x))))
        if self.residual:
            out = out + x[:, : self.out_channels]
        return out


# ----------------------------------------------------------------------------- segmentation


class SegmentationNet(nn.Module):
    """torchvision's DeepLabV3 with a MobileNetV3-Large backbone, randomly initialised (no
    pretrained weights can be downloaded here), returning the logit map itself so that wm.train
    and the hooks treat it like any classifier: cross-entropy over pixels, IGNORE_INDEX skipped."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.net = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


# ----------------------------------------------------------------------------- Zhang et al.: R, D and H


class InstanceNorm(nn.GroupNorm):
    """Affine instance normalisation (what `nn.InstanceNorm2d(channels, affine=True)` computes: per
    image and channel, no running statistics), as GroupNorm with one group per channel: the same
    function, parameters (weight, bias), initialisation and eps, to float rounding.
    InstanceNorm2d reshapes its input into one contiguous batch-norm call and copies it back;
    GroupNorm's kernel is fused and keeps channels_last: a stage-1 step is 1.17x faster with it
    on 2 CPU cores (1.26x together with channels_last; benchmarks/bench.py)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, eps=1e-5, affine=True)


class _DilatedBlock(nn.Module):
    def __init__(self, c: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, bias=False), InstanceNorm(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, bias=False), InstanceNorm(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class DilatedResNet(nn.Module):
    """The official code's extractor R ('HidingRes'): conv-IN-ReLU ×2, a stride-2 conv, residual
    blocks of dilated convs at half resolution, ×2 up-sampling (bilinear + conv here, instead of a
    transposed conv: no checkerboard), conv, 1×1 conv to OUT_CHANNELS. Sigmoid output for R;
    `residual=True` (the CEILNet-like surrogate) returns input + correction instead."""

    DILATIONS = (2, 2, 2, 2, 4, 4, 4, 4, 1)

    def __init__(self, in_channels: int = 3, out_channels: int = 1, width: int = 32, blocks: int = 5,
                 residual: bool = False) -> None:
        super().__init__()
        c = width
        def cin(i, o, s=1):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False), InstanceNorm(o),
                                 nn.ReLU(inplace=True))
        self.stem = nn.Sequential(cin(in_channels, c), cin(c, c), cin(c, c, 2))
        dil = [self.DILATIONS[round(i * (len(self.DILATIONS) - 1) / max(1, blocks - 1))] for i in range(blocks)]
        self.blocks = nn.Sequential(*(_DilatedBlock(c, d) for d in dil))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), cin(c, c), cin(c, c))
        self.final = nn.Conv2d(c, out_channels, 1)
        self.residual = residual
        if residual:  # starts as the identity, like the other residual surrogates
            nn.init.zeros_(self.final.weight)
            nn.init.zeros_(self.final.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.final(self.up(self.blocks(self.stem(x))))
        return x[:, :out.shape[1]] + out if self.residual else torch.sigmoid(out)


class PatchDiscriminator(nn.Module):
    """The official code's D: 3×3 stride-2 conv blocks (InstanceNorm from the second on,
    LeakyReLU 0.2), then a 3×3 conv to one channel: a map of real/fake scores per patch."""

    def __init__(self, in_channels: int = 3, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        mods, c_in = [], in_channels
        for i in range(layers):
            c_out = width * 2 ** i
            mods += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)]
            if i:
                mods += [InstanceNorm(c_out)]
            mods += [nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        mods += [nn.Conv2d(c_in, 1, 3, padding=1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Embedder(nn.Module):
    """H: a residual U-Net on cat(B, δ) → B′ = B + correction (zero-initialised: starts at B′ = B)."""

    def __init__(self, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.net = UNet(in_channels=4, out_channels=3, width=width, depth=depth, residual=True)
        nn.init.zeros_(self.net.final.weight)
        nn.init.zeros_(self.net.final.bias)

    def forward(self, b: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([b, delta.expand(len(b), -1, -1, -1)], 1)).clamp(0, 1)


# ----------------------------------------------------------------------------- surrogates


SM_ARCHS = ("unet", "resnet9", "resnet16", "ceilnet")
RESNET_LAYOUTS = ("pix2pix", "full")
"""The ResNet surrogates' layouts: pix2pix's (two stride-2 down-samplings, the blocks at 4 × width
and a quarter of the side) or everything at full resolution."""
RESNET_NORMS = ("batch", "instance")
"""The ResNet surrogates' norms: BatchNorm (the studies') or InstanceNorm (the official code's)."""
SM_LAYOUT, SM_NORM = "pix2pix", "batch"
"""The layout and norm of every ResNet surrogate the studies train (the defaults of build_surrogate)."""


def build_surrogate(arch: str, width: int, layout: str = SM_LAYOUT, norm: str = SM_NORM) -> nn.Module:
    """A surrogate (or M) that learns a residual correction of its input, as the official
    SR-attack code does (learn_residual): U-Net (depth 2), ResNet-9/16 (pix2pix's
    resnet_9blocks/resnet_16blocks: two stride-2 down-samplings, the blocks at 4 × WIDTH and a
    quarter of the resolution, two transposed-conv up-samplings) or the CEILNet-like dilated
    residual net (half resolution). Every architecture gets the same WIDTH, as pix2pix gives its
    U-Net and ResNet generators the same ngf.

    What was measured before settling on this (seed 0, cpu profile, stage-1 R, success rate on
    the test patches): full-resolution ResNet-9s at width 8 (the first version) copied the
    service at 26.7 dB and carried no logo (0.00); at width 16 they trained badly (19.4 dB,
    0.00); the pix2pix layout reached 0.10 at width 8 (ResNet-16: 0.61) and 0.98 at width 16.
    Those probes scored the test patches; the held-out tuning chapter chooses LAYOUT and NORM of the
    ResNets again (RESNET_LAYOUTS, RESNET_NORMS) as a thief would, by copy quality on validation
    (wm.tuning): over 3 seeds and both ResNets at width 16, pix2pix's layout with BatchNorm copies at
    27.97 dB, full resolution with BatchNorm 27.08, with InstanceNorm 24.39, pix2pix's layout with
    InstanceNorm 23.39; the defaults are that pick. Only the ResNets have a LAYOUT and NORM to
    choose: another ARCH refuses any but the defaults."""
    _check_choice(layout, RESNET_LAYOUTS, "surrogate layout")
    _check_choice(norm, RESNET_NORMS, "surrogate norm")
    is_resnet = arch in ("resnet9", "resnet16")
    if not is_resnet and (layout, norm) != (SM_LAYOUT, SM_NORM):
        raise ValueError(f"surrogate {arch!r} has no layout or norm to choose (only resnet9 and resnet16): "
                         f"got layout={layout!r}, norm={norm!r}")
    if arch == "unet":
        net = UNet(3, 3, width=width, depth=2, residual=True)
    elif is_resnet:
        net = ResNetI2I(3, 3, width=width, n_blocks=int(arch[6:]), residual=True, norm=norm,
                        n_down=2 if layout == "pix2pix" else 0)
    elif arch == "ceilnet":
        return DilatedResNet(3, 3, width=width, blocks=5, residual=True)  # zero-initialised already
    else:
        raise ValueError(f"unknown surrogate architecture {arch!r}: choose from {', '.join(SM_ARCHS)}")
    # a zero final conv: every surrogate starts as the identity (input + 0). Measured on deraining,
    # 3 epochs: ResNet-9 reaches 25.2 dB from a zero start and 16.1 dB from the default one.
    nn.init.zeros_(net.final.weight)
    nn.init.zeros_(net.final.bias)
    return net


VGG_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's ImageNet VGG-19 checkpoint name


# ---------------------------------------------------------------------------------------------
# Zhang et al.'s losses: LSGAN and the perceptual (VGG-19) loss
# ---------------------------------------------------------------------------------------------


def lsgan(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean (score − 1)² for real, score² for fake."""
    return F.mse_loss(scores, torch.full_like(scores, 1.0 if real else 0.0))


def vgg_path() -> Path | None:
    """ImageNet VGG-19 weights if present locally ($WM_VGG_WEIGHTS, else torch's hub cache)."""
    env = os.environ.get("WM_VGG_WEIGHTS")
    if env:
        if not Path(env).is_file():
            raise data.DataError(f"WM_VGG_WEIGHTS={env} is not a file")
        return Path(env)
    p = Path(torch.hub.get_dir()) / "checkpoints" / VGG_FILE
    return p if p.is_file() else None


class Perceptual(nn.Module):
    """MSE between VGG-19 features up to relu3_3 (the SR-attack code's content loss), ImageNet-
    normalised inputs; weights loaded from a local file, frozen."""

    LAYERS = 16  # VGG-19's features[:16]: conv1_1 … relu3_3 (7 convs)

    def __init__(self, path: Path) -> None:
        super().__init__()
        from torchvision.models import vgg
        self.features = vgg.make_layers(vgg.cfgs["E"])[:self.LAYERS]  # VGG-19's convs, without the classifier
        state = torch.load(path, map_location="cpu", weights_only=True)
        needed = {f"features.{k}": k for k in self.features.state_dict()}
        missing = sorted(set(needed) - set(state))
        if missing:
            raise data.DataError(f"{path} is not a torchvision VGG-19 checkpoint: it lacks {', '.join(missing[:3])}")
        self.features.load_state_dict({k: state[name] for name, k in needed.items()})
        self.features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(data.IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(data.IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        f = lambda x: self.features((x - self.mean) / self.std)  # noqa: E731
        return F.mse_loss(f(out), f(target))
