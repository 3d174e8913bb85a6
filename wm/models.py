"""Network architectures used by the watermarking studies.

Two families:

* Classifiers (``SmallCNN``, ``resnet18``, ``vgg16``, ``mobilenet_v3_small``,
  ``swin_t``) for small images: 1x28x28 (MNIST / Fashion-MNIST) or 3x32x32 (CIFAR).
  They all expose the same two hooks the studies rely on:

  - ``model.features(x)``: the penultimate embedding (input of the last
    linear layer), used e.g. for feature-space analyses;
  - ``model.head``: the final ``nn.Linear``; ``forward`` calls it, so
    assigning a new ``nn.Linear`` to ``model.head`` really replaces the
    classifier (transfer learning / fine-tuning attacks).

  The torchvision architectures are wrapped in ``HeadedClassifier`` (backbone
  + head) instead of aliasing their own last layer: an alias such as
  ``model.head = model.fc`` would register the same layer twice in the
  state dict, and assigning a new ``head`` would silently leave ``fc`` in use.

* Image-to-image networks (``UNet``, ``ResNetI2I``) for watermark embedding,
  removal and restoration tasks (e.g. deraining), optionally residual
  (output = input + learned correction).

* Segmentation (``SegmentationNet``: DeepLabV3, MobileNetV3 backbone), returning its logit map
  so that the training loop treats it like a classifier.

All models are created with random weights: pretrained downloads are
impossible in the study's offline environment, and ImageNet weights would not
fit the adapted first layers anyway.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
import torchvision
from torch import nn

# ----------------------------------------------------------------------------- helpers


def _norm2d(kind: str, channels: int) -> nn.Module:
    """Normalisation layer by name: "batch", "instance" or "none"."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        # affine=True so that the layer can still learn a per-channel scale
        # and shift, like BatchNorm; running stats are not tracked, so train
        # and eval behave identically.
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'batch', 'instance' or 'none'")


def _check_choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}; got {value!r}")


def _conv_norm_relu(c_in: int, c_out: int, norm: str, padding_mode: str = "zeros") -> nn.Sequential:
    """3x3 conv (same padding) + norm + ReLU.

    The conv has a bias only without normalisation: a bias followed by a
    normalisation layer is cancelled by its mean subtraction.
    """
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=(norm == "none"), padding_mode=padding_mode),
        _norm2d(norm, c_out),
        nn.ReLU(inplace=True),
    )


def _init_relu_convs(module: nn.Module) -> None:
    """He (Kaiming) normal init for every conv, zero biases.

    PyTorch's default conv init (uniform, a=sqrt(5)) shrinks activations at
    every layer; without normalisation layers that slows early training
    noticeably, so the BN-free variants would be handicapped against the BN
    ones. He init keeps activation variance roughly constant through ReLUs.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _stem_conv(in_channels: int, out_channels: int, bias: bool) -> nn.Conv2d:
    """3x3, stride-1 replacement for a torchvision first conv.

    Initialised like torchvision initialises these architectures' convs
    (Kaiming normal, fan_out), so the replaced layer is not the odd one out.
    """
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


# ----------------------------------------------------------------------------- classifiers


class SmallCNN(nn.Module):
    """Small, fast CNN for 28x28 (or 32x32) images.

    Layout (w = ``width``)::

        conv3x3(in -> w)  + norm + ReLU, maxpool 2   28 -> 14
        conv3x3(w -> 2w)  + norm + ReLU, maxpool 2   14 -> 7
        conv3x3(2w -> 4w) + norm + ReLU              7
        adaptive average pool to 3x3, flatten -> features (36w = 1152 at w=32)
        head: Linear(36w -> num_classes)

    Cost at width 32 on a 28x28 image: about 7.5 M multiply-adds (0.23 M +
    3.6 M + 3.6 M in the convs, 0.01 M in the head), small enough to train
    several seeds on two CPU cores.

    Why a 3x3 pooled map and not global average pooling: with only three
    convs (receptive field 18 px) the classes Fashion-MNIST confuses (shirt /
    T-shirt / pullover / coat) differ in WHERE things are (sleeves, collar),
    which a global average throws away. Measured on Fashion-MNIST, 5 epochs,
    SGD-Nesterov lr 0.05, cosine, batch 128: 89.6% test accuracy with global
    pooling, 91.3% with the 3x3 map. The adaptive pool keeps the head
    independent of the input size (28x28 and 32x32 both end on 3x3).

    ``norm``:

    * ``"batch"`` (default): BatchNorm after each conv.
    * ``"none"``: no normalisation layer at all (convs get biases, He init).
      This is the variant for studies that feed samples with huge,
      out-of-range pixel values: BatchNorm would mix those samples' statistics
      into the batch (training) and into the running estimates (evaluation),
      changing the predictions on clean samples. GroupNorm would avoid the
      cross-sample mixing but would also rescale each sample by its own
      statistics, hiding exactly the out-of-range magnitudes the study is
      about; plain convolutions keep the network's response to them raw.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, norm: str = "batch") -> None:
        super().__init__()
        _check_choice(norm, ("batch", "none"), "SmallCNN norm")
        w = width
        self.body = nn.Sequential(
            _conv_norm_relu(in_channels, w, norm),
            nn.MaxPool2d(2),
            _conv_norm_relu(w, 2 * w, norm),
            nn.MaxPool2d(2),
            _conv_norm_relu(2 * w, 4 * w, norm),
            nn.AdaptiveAvgPool2d(3),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w * 9, num_classes)
        _init_relu_convs(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding, shape (N, 36 * width)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class HeadedClassifier(nn.Module):
    """A feature extractor (``backbone``) followed by a linear ``head``.

    Used to give the torchvision architectures the same ``features`` /
    ``head`` interface as ``SmallCNN``. ``forward`` looks ``self.head`` up at
    call time, so replacing the attribute replaces the classifier.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resnet18(in_channels: int = 1, num_classes: int = 10, stem: str = "cifar") -> HeadedClassifier:
    """torchvision ResNet-18 for 28x28 / 32x32 inputs, with one of two stems.

    * ``stem="cifar"`` (default), the usual adaptation to small images: first conv
      3x3 stride 1 with ``in_channels`` inputs, and no initial max-pool, so the four
      stages run at 28/14/7/4 (or 32/16/8/4); about 0.43 GMAC per 28x28 image.
    * ``stem="imagenet"``: torchvision's own 7x7 stride-2 conv and 3x3 stride-2 max-pool
      (only the input channels changed), so the stages run at 7/4/2/1: the unchanged
      ImageNet architecture, ~15x cheaper (about 0.03 GMAC), which is what a 2-core CPU
      can train; it sees the image at a quarter of the resolution after the stem.

    In both, ``fc`` is replaced by ``nn.Identity`` inside the backbone, and the
    classifier is ``model.head = Linear(512, num_classes)``.
    """
    _check_choice(stem, ("cifar", "imagenet"), "resnet18 stem")
    net = torchvision.models.resnet18(weights=None)
    if stem == "cifar":
        net.conv1 = _stem_conv(in_channels, 64, bias=False)
        net.maxpool = nn.Identity()
    else:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    return HeadedClassifier(net, nn.Linear(512, num_classes))


def vgg16(in_channels: int = 1, num_classes: int = 10, batch_norm: bool = True) -> HeadedClassifier:
    """torchvision VGG-16 adapted to 28x28 / 32x32 inputs.

    Adaptations (these are NOT the ImageNet shapes):

    * first conv: ``in_channels`` inputs (3x3 stride 1 as in VGG already);
    * only the first three of the five 2x2 max-pools are kept. With all five,
      28 -> 14 -> 7 -> 3 -> 1 -> 0 collapses; with four, the last block's 3x3
      convs would run on a 1x1 map (effectively 1x1 convs). Keeping three,
      blocks 4 and 5 run at 3x3 (28x28 input) or 4x4 (32x32 input);
    * ``avgpool`` to 1x1 instead of 7x7, and a small classifier
      512 -> 512 (ReLU, dropout 0.5) -> ``head`` = Linear(512, num_classes)
      replaces the 25088 -> 4096 -> 4096 -> 1000 one (120 M parameters,
      pointless for 10 classes).
    * ``batch_norm=True`` (default) uses the VGG-16-BN variant: plain VGG-16
      trained from scratch is sensitive to the learning rate (it can sit at
      chance level for epochs with rates VGG-16-BN trains well with), and the
      studies do not tune the optimiser per architecture. Pass
      ``batch_norm=False`` for the original layout.
    """
    # Build only the convolutional part from torchvision's own VGG-16 layer
    # table ("D") with its make_layers: instantiating torchvision.models.vgg16
    # would first allocate the 25088 -> 4096 classifier (~120 M parameters,
    # ~0.5 GB) only to throw it away.
    cfg: list[str | int] = []
    n_pools = 0
    for item in torchvision.models.vgg.cfgs["D"]:
        if item == "M":
            n_pools += 1
            if n_pools > 3:
                continue
        cfg.append(item)
    conv_body = torchvision.models.vgg.make_layers(cfg, batch_norm=batch_norm)
    # make_layers leaves PyTorch's default init; apply torchvision VGG's.
    for m in conv_body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    first = conv_body[0]
    assert isinstance(first, nn.Conv2d)
    conv_body[0] = _stem_conv(in_channels, first.out_channels, bias=first.bias is not None)
    hidden = nn.Linear(512, 512)
    head = nn.Linear(512, num_classes)
    # torchvision's VGG initialises its linear layers with N(0, 0.01).
    for lin in (hidden, head):
        nn.init.normal_(lin.weight, 0.0, 0.01)
        nn.init.zeros_(lin.bias)
    backbone = nn.Sequential(
        conv_body,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        hidden,
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
    )
    return HeadedClassifier(backbone, head)


def mobilenet_v3_small(in_channels: int = 1, num_classes: int = 10) -> HeadedClassifier:
    """torchvision MobileNetV3-Small adapted to 28x28 / 32x32 inputs.

    Adaptations (these are NOT the ImageNet shapes):

    * first conv: 3x3, stride 1 (ImageNet: stride 2), ``in_channels``
      inputs, 16 outputs; total down-sampling 16 instead of 32, so a 28x28
      input ends on a 2x2 map rather than vanishing;
    * the classifier is unchanged up to its hidden layer
      (576 -> 1024, Hardswish, dropout 0.2); its last layer is
      ``model.head = Linear(1024, num_classes)``.
    """
    net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=num_classes)
    stem = net.features[0][0]
    assert isinstance(stem, nn.Conv2d)
    net.features[0][0] = _stem_conv(in_channels, stem.out_channels, bias=stem.bias is not None)
    head = net.classifier[-1]
    assert isinstance(head, nn.Linear)
    backbone = nn.Sequential(net.features, net.avgpool, nn.Flatten(), *list(net.classifier)[:-1])
    return HeadedClassifier(backbone, head)


# ----------------------------------------------------------------------------- image-to-image


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


# ----------------------------------------------------------------------------- registry


def swin_t(in_channels: int = 1, num_classes: int = 10) -> HeadedClassifier:
    """torchvision's Swin-T (embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7, stochastic
    depth 0.2) adapted to 28×28: patches of 2×2 instead of 4×4, so the four stages run at
    14/7/4/2 tokens a side instead of 7/4/2/1 (torchvision pads the small maps to the window),
    and IN_CHANNELS inputs. Same features/head interface as the classifiers above."""
    net = torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[2, 2], embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=[7, 7],
        stochastic_depth_prob=0.2, num_classes=num_classes)
    net.features[0][0] = nn.Conv2d(in_channels, 96, kernel_size=2, stride=2)
    backbone = nn.Sequential(net.features, net.norm, net.permute, net.avgpool, net.flatten)
    return HeadedClassifier(backbone, net.head)


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


_REGISTRY: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(
    {
        "smallcnn": SmallCNN,
        "resnet18": resnet18,
        "vgg16": vgg16,
        "mobilenet_v3_small": mobilenet_v3_small,
        "swin_t": swin_t,
        "unet": UNet,
        "resnet_i2i": ResNetI2I,
    }
)
"""Read-only name -> constructor table (a constant, not mutable state)."""


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name, passing ``kwargs`` to its constructor.

    Names: smallcnn, resnet18, vgg16, mobilenet_v3_small, swin_t, unet, resnet_i2i.
    Config files and results tables refer to models by these names.
    """
    try:
        constructor = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None
    return constructor(**kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
