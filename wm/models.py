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

* Image-to-image networks (``UNet``, ``ResNetI2I``) and the segmentation network live in
  ``wm.image_models`` (the registry below still builds them by name).

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

# the image-to-image networks moved to wm.image_models; the registry below and old imports still find them here
from wm.image_models import ResNetI2I, SegmentationNet, UNet  # noqa: F401
from wm.layers import _check_choice, _conv_norm_relu, _init_relu_convs, _stem_conv

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
