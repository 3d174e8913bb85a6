"""The image-processing study's task and its classical pieces (split out of wm.image_processing,
which re-exports every name): the watermark images (the project's logo, a QR-like pattern), the
deraining task (synthetic rain on natural-image patches, 8-bit delivery, the photo split and the
pairs), the traditional spread-spectrum mark (Cox et al. 1997) and the total-variation denoiser
protected in the classical-algorithm experiment."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from wm import ROOT, data, metrics

if TYPE_CHECKING:  # the extractor's type only: wm.image_processing imports this module
    from wm.image_processing import DeepWatermark

WATERMARKS = ("logo", "qr")
LOGO_PATH = ROOT / "data" / "watermarks" / "logo.png"


def _subseed(seed: int, tag: str) -> int:
    """An independent seed per purpose (data split, rain, patterns, ...), derived with SHA-256."""
    return int.from_bytes(hashlib.sha256(f"image_processing|{tag}|{seed}".encode()).digest()[:4], "big") >> 1  # 31 bits: numpy seeds must be < 2**32



# ---------------------------------------------------------------------------------------------
# 1. Watermark images: the project's logo, a QR-like pattern, the blank
# ---------------------------------------------------------------------------------------------


def make_logo(size: int = 128) -> np.ndarray:
    """The project's logo as uint8 size×size, drawn with geometry only (no font): a thick ring
    around a bold 'W', dark strokes on white, like the paper's logos (mostly white). The shipped
    data/watermarks/logo.png is make_logo(128); a test checks that they are equal."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    img = np.ones((size, size))
    r = np.hypot(xx - 0.5, yy - 0.5)
    img[(r > 0.36) & (r < 0.46)] = 0.0  # the ring
    # the W: four thick strokes between five points, as distance-to-segment masks
    pts = [(0.22, 0.30), (0.35, 0.70), (0.50, 0.42), (0.65, 0.70), (0.78, 0.30)]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy), 0, 1)
        d = np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy))
        img[d < 0.055] = 0.0
    return (img * 255).round().astype(np.uint8)


def qr_pattern(size: int, cells: int = 8, seed: int = 0) -> np.ndarray:
    """A QR-like binary pattern as uint8 size×size: cells×cells random black/white squares (half
    black on average), seeded, upscaled by nearest neighbour."""
    rng = np.random.default_rng(_subseed(seed, "qr"))
    grid = rng.integers(0, 2, (cells, cells)).astype(np.uint8) * 255
    idx = np.arange(size) * cells // size
    return np.ascontiguousarray(grid[idx][:, idx])


def load_logo(path: Path = LOGO_PATH) -> np.ndarray:
    """The shipped logo as uint8 (grey)."""
    from PIL import Image
    if not path.is_file():
        raise data.DataError(f"the watermark logo {path} is missing (it ships with the project: "
                             "restore it with `git checkout data/watermarks/logo.png`)")
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def watermark_image(name: str, size: int, seed: int = 0) -> torch.Tensor:
    """δ as a float 1×size×size tensor in [0, 1]: the logo (resized, area-averaged) or the QR."""
    if name == "qr":
        img = qr_pattern(size, seed=seed)
    elif name == "logo":
        from PIL import Image
        img = np.asarray(Image.fromarray(load_logo()).resize((size, size), Image.BILINEAR))
    else:
        raise ValueError(f"watermark={name!r} must be one of {', '.join(WATERMARKS)}")
    return torch.from_numpy(img.astype(np.float32) / 255.0)[None]


# ---------------------------------------------------------------------------------------------
# 2. The deraining task: synthetic rain on natural-image patches
# ---------------------------------------------------------------------------------------------


def add_rain(clean: torch.Tensor, seed: int, density: float = 0.03, length: int = 9,
             strength: float = 0.8, max_angle: float = 25.0) -> torch.Tensor:
    """Rainy versions A of clean images (float N×3×H×W in [0, 1]).

    Per image: sparse drops (Bernoulli(density), each with a random brightness) smeared along a
    line of LENGTH pixels at one angle in ±MAX_ANGLE degrees from vertical (a motion-blur kernel,
    as rain-streak synthesis does), then blended with the image as light: A = B + s·(1 − B)
    (a 'screen' blend, so streaks brighten without saturating), s = strength·streaks.
    Deterministic in SEED; works on any device."""
    n, _, h, w = clean.shape
    g = torch.Generator().manual_seed(_subseed(seed, "rain"))
    drops = (torch.rand(n, 1, h, w, generator=g) < density).float() * (0.5 + 0.5 * torch.rand(n, 1, h, w, generator=g))
    angles = (torch.rand(n, generator=g) * 2 - 1) * math.radians(max_angle)
    k = length if length % 2 else length + 1
    c = k // 2
    kernels = torch.zeros(n, 1, k, k)
    for t in torch.linspace(-c, c, 4 * k):  # a thin line through the centre at each image's angle
        rows = (c + t * torch.cos(angles)).round().long().clamp(0, k - 1)
        cols = (c + t * torch.sin(angles)).round().long().clamp(0, k - 1)
        kernels[torch.arange(n), 0, rows, cols] = 1.0
    kernels /= kernels.sum(dim=(2, 3), keepdim=True)
    # one grouped convolution: image i with its own kernel
    streaks = F.conv2d(drops.view(1, n, h, w), kernels, padding=c, groups=n).view(n, 1, h, w)
    streaks = (streaks * k / 2).clamp(0, 1).to(clean.device)  # a full streak reaches ~the drop's brightness
    s = strength * streaks
    return (clean + s * (1 - clean)).clamp(0, 1)


def deliver(x: torch.Tensor) -> torch.Tensor:
    """What an API hands out: the image clamped and rounded to 8 bits (PNG), back as float."""
    return (x.clamp(0, 1) * 255).round() / 255


@dataclass
class Pairs:
    """Aligned (rainy A, clean ground truth) patches, float N×3×P×P in [0, 1], on one device."""

    a: torch.Tensor
    clean: torch.Tensor

    def __len__(self) -> int:
        return len(self.a)


def split_photos(images: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The training photos split BY IMAGE between the owner (M, H, R, stage 2) and the attacker
    (the surrogates): alternate images, so both sides get a mix of colour and grey photos."""
    if len(images) < 2:
        raise data.DataError(f"the training photos must be at least 2 images (owner and attacker), got {len(images)}")
    return images[0::2], images[1::2]


def make_pairs(images: list[np.ndarray], n: int, size: int, seed: int, rain: dict, device) -> Pairs:
    """N random patches of IMAGES (no flips: framing must stay aligned) with rain added."""
    clean = data.sample_patches(images, n, size, seed=_subseed(seed, f"patches{size}"), flip=False)
    clean = clean.float().div(255).to(device)
    return Pairs(a=deliver(add_rain(clean, seed=seed, **rain)), clean=clean)


# ---------------------------------------------------------------------------------------------
# 3. The traditional baseline: additive spread-spectrum bits (Cox et al. 1997), blind decoding
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpreadSpectrum:
    """L bits, each spread over the whole image by its own seeded ±1 pattern P_k (the same on the
    three channels). Embedding: B′ = B + α·Σ_k s_k P_k / √L with s_k = ±1, so the mark has
    per-pixel RMS α whatever L (PSNR ≈ −20·log10 α). Blind decoding (no access to B): the image
    minus its 3×3 box blur (a high-pass that removes most of the host image), averaged over
    channels, correlated with each P_k; bit k = 1 where the correlation is positive."""

    bits: torch.Tensor  # L bits (0/1)
    patterns: torch.Tensor  # L×P×P of ±1
    alpha: float

    @classmethod
    def create(cls, n_bits: int, size: int, psnr: float, seed: int) -> SpreadSpectrum:
        g = torch.Generator().manual_seed(_subseed(seed, f"ss{n_bits}"))
        bits = torch.randint(0, 2, (n_bits,), generator=g)
        patterns = torch.randint(0, 2, (n_bits, size, size), generator=g).float() * 2 - 1
        return cls(bits, patterns, 10 ** (-psnr / 20))

    def mark(self) -> torch.Tensor:
        s = (self.bits.float() * 2 - 1).view(-1, 1, 1)
        return self.alpha * (s * self.patterns).sum(0) / math.sqrt(len(self.bits))

    def embed(self, b: torch.Tensor) -> torch.Tensor:
        return deliver(b + self.mark().to(b.device))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """N×L decoded bits."""
        grey = x.mean(1, keepdim=True)
        high = grey - F.avg_pool2d(grey, 3, stride=1, padding=1, count_include_pad=False)
        corr = torch.einsum("nhw,lhw->nl", high[:, 0], self.patterns.to(x.device))
        return (corr > 0).long()

    def bit_accuracy(self, x: torch.Tensor) -> float:
        """Mean share of correct bits over the images of X."""
        return float((self.decode(x).cpu() == self.bits).float().mean())


# ---------------------------------------------------------------------------------------------
# 4. Protecting a classical algorithm: total-variation denoising
# ---------------------------------------------------------------------------------------------


def add_noise(clean: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """Noisy 8-bit inputs of the TV task: clean + N(0, σ²), delivered as 8-bit."""
    g = torch.Generator().manual_seed(_subseed(seed, "noise"))
    return deliver(clean + sigma * torch.randn(clean.shape, generator=g).to(clean.device))


def tv_denoise(x: torch.Tensor, weight: float) -> torch.Tensor:
    """scikit-image's Chambolle TV denoiser, image by image (the 'model' protected in experiment 5)."""
    from skimage.restoration import denoise_tv_chambolle
    arr = x.permute(0, 2, 3, 1).cpu().numpy().astype(np.float64)
    out = np.stack([denoise_tv_chambolle(im, weight=weight, channel_axis=-1) for im in arr])
    return torch.from_numpy(out).float().permute(0, 3, 1, 2).contiguous().to(x.device)


# ---------------------------------------------------------------------------------------------
# R's verdict on a batch: NC against δ, its gain, the success rates
# ---------------------------------------------------------------------------------------------

MIN_GAIN = 0.5
"""The amplitude-aware success rule's second condition: R's output carries at least half of δ's
contrast (`Extraction.gain`). The centred NC alone is blind to amplitude: a faint logo-shaped
residue correlates as well as the logo itself."""


class Extraction:
    """R's verdict on a batch of images: per-image centred and uncentred NC against δ, the gain
    (how much of δ's centred pattern R's output carries: its least-squares coefficient, 1 = the
    whole logo, 0 = none), and the share of images whose centred NC reaches tau (the success
    rate), also with the gain at least MIN_GAIN (the amplitude-aware rate)."""

    def __init__(self, nc: np.ndarray, nc_raw: np.ndarray, tau: float, gain: np.ndarray | None = None):
        self.nc, self.nc_raw, self.tau = nc, nc_raw, tau
        self.gain = np.ones_like(nc) if gain is None else gain

    @property
    def success_rate(self) -> float:
        return float((self.nc >= self.tau).mean())

    @property
    def success_rate_amp(self) -> float:
        return float(((self.nc >= self.tau) & (self.gain >= MIN_GAIN)).mean())

    def success_over(self, taus):
        """Both success rates at each threshold of TAUS (a DataFrame)."""
        import pandas as pd
        return pd.DataFrame([{"tau": t, "centred NC ≥ τ": float((self.nc >= t).mean()),
                              f"and gain ≥ {MIN_GAIN:g}": float(((self.nc >= t) & (self.gain >= MIN_GAIN)).mean())}
                             for t in taus])

    def metrics(self) -> dict[str, float]:
        return {"nc": float(self.nc.mean()), "nc_raw": float(self.nc_raw.mean()), "success_rate": self.success_rate,
                "success_rate_amp": self.success_rate_amp}


def verify(wmk: DeepWatermark, x: torch.Tensor, tau: float) -> Extraction:
    """Run R on X and score every output against δ (WMK: a wm.image_processing.DeepWatermark)."""
    return verify_extracted(wmk, wmk.extract(x), tau)


def verify_extracted(wmk: DeepWatermark, out: torch.Tensor, tau: float) -> Extraction:
    """Score R's outputs OUT (R already run) against δ."""
    target = wmk.delta.expand_as(out)
    o = out.float().flatten(1)
    d = target.float().flatten(1)
    o, d = o - o.mean(1, keepdim=True), d - d.mean(1, keepdim=True)
    gain = ((o * d).sum(1) / (d * d).sum(1).clamp_min(1e-12)).cpu().numpy()
    return Extraction(metrics.nc(out, target, centred=True), metrics.nc(out, target, centred=False), tau, gain)
