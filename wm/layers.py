"""Layer helpers the classifiers (wm.models) and the image-to-image networks (wm.image_models)
share: normalisation by name, conv-norm-ReLU blocks, He initialisation, the adapted stem."""

from __future__ import annotations

from torch import nn


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
