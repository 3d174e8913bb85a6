"""Metrics shared by every watermarking study.

Every function accepts torch tensors or numpy arrays (anything ``np.asarray``
understands) and returns plain Python floats or numpy arrays, so that results
can be written to JSON/CSV and plotted without dragging tensors (and possibly
GPU memory or autograd graphs) along.

Image metrics (PSNR, SSIM) delegate to scikit-image on purpose: the studies
must be comparable with published numbers, and hand-written PSNR/SSIM code is a
classic source of silent disagreements (window shape, covariance
normalisation, border handling). Per-image values are returned rather than a
batch mean because the studies report distributions and confidence intervals,
and a mean can always be taken later but never undone.

Also here: confidence intervals, `ber_threshold` (the exact binomial bound a bit-reading detector
is judged by) and the segmentation scores (pixel accuracy, mean IoU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

# skimage's default SSIM window (uniform filter, no Gaussian weights).
_SSIM_WIN_SIZE = 7


def to_numpy(x: Any) -> np.ndarray:
    """Convert a tensor / array / sequence to a numpy array.

    Tensors are detached and moved to the CPU first because metrics are pure
    bookkeeping: they must never keep a graph alive or fail on a CUDA tensor.
    """
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shape mismatch {a.shape} vs {b.shape}")


def _as_image_batch(x: Any) -> np.ndarray:
    """Return images as a float64 batch (N, C, H, W).

    Accepted layouts: (N, C, H, W) batch, single (C, H, W) image, single
    (H, W) grey image. A 3-D array is always read as ONE channels-first image
    (the package's tensors are channels-first), never as a batch of grey
    images; pass (N, 1, H, W) for that.
    """
    arr = to_numpy(x).astype(np.float64, copy=False)
    if arr.ndim == 2:
        return arr[None, None]
    if arr.ndim == 3:
        return arr[None]
    if arr.ndim == 4:
        return arr
    raise ValueError(
        f"expected an image of shape (H, W), (C, H, W) or a batch (N, C, H, W); got {arr.shape}"
    )


def accuracy(logits_or_preds: Any, labels: Any) -> float:
    """Fraction of correct predictions.

    ``logits_or_preds`` is either (N, C) scores (logits, probabilities; the
    argmax is taken) or (N,) predicted class indices.
    """
    scores = to_numpy(logits_or_preds)
    y = to_numpy(labels).reshape(-1)
    if scores.ndim == 2:
        preds = scores.argmax(axis=1)
    elif scores.ndim == 1:
        preds = scores
    else:
        raise ValueError(f"expected (N, C) logits or (N,) predictions; got {scores.shape}")
    if preds.shape[0] != y.shape[0]:
        raise ValueError(f"accuracy: {preds.shape[0]} predictions vs {y.shape[0]} labels")
    if y.shape[0] == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    return float(np.mean(preds.astype(np.int64) == y.astype(np.int64)))


def psnr(a: Any, b: Any, data_range: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB, one value per image.

    Computed with ``skimage.metrics.peak_signal_noise_ratio``:
    ``10 * log10(data_range**2 / MSE)``, the MSE taken over all channels and
    pixels of one image. Identical images have MSE 0 and give ``inf`` (the
    mathematically correct limit); callers that average PSNR over images must
    decide how to treat inf (e.g. report it separately), because a mean that
    contains inf is inf.

    Shapes: (N, C, H, W), (C, H, W) or (H, W); returns an array of shape (N,)
    (length 1 for a single image).
    """
    x, y = _as_image_batch(a), _as_image_batch(b)
    _check_same_shape(x, y, "psnr")
    out = np.empty(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):
        # skimage divides by the MSE; for identical images that is 0 -> inf
        # with a RuntimeWarning. inf is the intended result, so silence it.
        with np.errstate(divide="ignore"):
            out[i] = peak_signal_noise_ratio(x[i], y[i], data_range=data_range)
    return out


def ssim(a: Any, b: Any, data_range: float = 1.0) -> np.ndarray:
    """Structural similarity (Wang et al. 2004), one value per image.

    Computed with ``skimage.metrics.structural_similarity`` with its defaults:
    7x7 uniform window, sample covariance, K1=0.01, K2=0.03, mean over the
    region not touched by the window's border (3 pixels cropped on each side).
    Multi-channel images are converted to channels-last and passed with
    ``channel_axis=-1``: skimage then averages the per-channel SSIMs.

    Images with a side smaller than 7 pixels raise ValueError: the default
    window does not fit, and silently shrinking it would make values
    incomparable across studies.

    Shapes: (N, C, H, W), (C, H, W) or (H, W); returns an array of shape (N,).
    """
    x, y = _as_image_batch(a), _as_image_batch(b)
    _check_same_shape(x, y, "ssim")
    h, w = x.shape[-2:]
    if min(h, w) < _SSIM_WIN_SIZE:
        raise ValueError(
            f"ssim: images of size {h}x{w} are smaller than the {_SSIM_WIN_SIZE}x{_SSIM_WIN_SIZE} "
            "window used by skimage's default SSIM; use images of at least 7x7 pixels"
        )
    out = np.empty(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):
        if x.shape[1] == 1:
            out[i] = structural_similarity(x[i, 0], y[i, 0], data_range=data_range)
        else:
            xi = np.moveaxis(x[i], 0, -1)
            yi = np.moveaxis(y[i], 0, -1)
            out[i] = structural_similarity(xi, yi, data_range=data_range, channel_axis=-1)
    return out


def nc(a: Any, b: Any, centred: bool) -> np.ndarray:
    """Normalised correlation between two batches, one value per item.

    The first axis is the batch axis and every item is flattened (a 1-D input
    is a single vector). For a single (H, W) logo pass it as (1, H, W).

    * ``centred=False``: ``<a, b> / (|a| |b|)``, the "NC" of the watermarking
      literature (cosine similarity).
    * ``centred=True``: each item's mean is subtracted first, i.e. Pearson's
      correlation coefficient.

    Both are reported because uncentred NC is misleading for logos: a logo is
    mostly white (ones), so a blank all-white image -- which carries no
    watermark at all -- already has a high uncentred NC with it (e.g. ~0.9 for
    a logo that is 80% white). Centring removes that shared offset, and the
    blank then scores 0.

    A vector with zero norm (after centring, for the centred version: a
    constant image) gives 0.0 instead of NaN: a blank carries no pattern, so
    it has no correlation with anything, and NaNs would poison averages over
    seeds.
    """
    x = to_numpy(a).astype(np.float64, copy=False)
    y = to_numpy(b).astype(np.float64, copy=False)
    _check_same_shape(x, y, "nc")
    if x.ndim == 0:
        raise ValueError("nc needs at least one-dimensional inputs")
    if x.ndim == 1:
        x, y = x[None], y[None]
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    if centred:
        x = x - x.mean(axis=1, keepdims=True)
        y = y - y.mean(axis=1, keepdims=True)
    num = np.sum(x * y, axis=1)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    out = np.zeros(x.shape[0], dtype=np.float64)
    nonzero = den > 0
    out[nonzero] = num[nonzero] / den[nonzero]
    return out


def _as_bits(x: Any) -> np.ndarray:
    arr = to_numpy(x)
    if arr.dtype != np.bool_ and not np.all((arr == 0) | (arr == 1)):
        # Refuse instead of thresholding: a caller passing logits or {-1, +1}
        # codes by mistake would otherwise get a plausible but wrong BER.
        raise ValueError("bits must be boolean or contain only 0 and 1")
    return arr.astype(bool)


def ber(bits_a: Any, bits_b: Any) -> float:
    """Bit error rate: fraction of positions where two bit vectors differ.

    Inputs are bool or 0/1 arrays/tensors of the same shape; a shape mismatch
    raises ValueError rather than broadcasting, since comparing a 64-bit
    message with a 32-bit one is always a bug.
    """
    x, y = _as_bits(bits_a), _as_bits(bits_b)
    _check_same_shape(x, y, "ber")
    if x.size == 0:
        raise ValueError("ber of empty bit vectors is undefined")
    return float(np.mean(x != y))


def bit_accuracy(bits_a: Any, bits_b: Any) -> float:
    """Fraction of matching bits, ``1 - ber``."""
    return 1.0 - ber(bits_a, bits_b)


def mean_ci(values: Any, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and Student-t confidence-interval half-width, for "mean +- CI".

    The half-width is ``t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s``
    the sample standard deviation (ddof=1). The t distribution, not the
    normal one, because studies average over few seeds (3-10).

    With a single value the half-width is NaN, not 0: the spread of one
    sample is unknown, and printing "+- 0" would claim a certainty that does
    not exist. An empty input raises ValueError.
    """
    v = to_numpy(values).astype(np.float64, copy=False).reshape(-1)
    if v.size == 0:
        raise ValueError("mean_ci of no values is undefined")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    mean = float(v.mean())
    if v.size == 1:
        return mean, float("nan")
    sem = v.std(ddof=1) / np.sqrt(v.size)
    t = stats.t.ppf((1.0 + confidence) / 2.0, df=v.size - 1)
    return mean, float(t * sem)


def ber_threshold(n_bits: int, fpr: float) -> float:
    """The largest BER t (a multiple of 1/N_BITS) such that a model unrelated to the key, whose
    bits read as independent fair coins, reaches BER ≤ t with probability ≤ FPR:
    P(Binomial(n, 1/2) ≤ n·t) ≤ fpr. Negative when no t qualifies (too few bits for that FPR)."""
    total, errors = 0, -1
    for e in range(n_bits + 1):
        total += math.comb(n_bits, e)
        if total / 2 ** n_bits > fpr:  # exact integers until this one division
            break
        errors = e
    return errors / n_bits


@torch.no_grad()
def segmentation_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                        batch_size: int = 16) -> tuple[float, float]:
    """(pixel accuracy, mean IoU over the classes present in Y or predicted) on labelled pixels."""
    model.eval()
    inter = torch.zeros(num_classes, dtype=torch.float64)
    union = torch.zeros(num_classes, dtype=torch.float64)
    correct = total = 0
    for i in range(0, len(x), batch_size):
        pred = model(x[i:i + batch_size]).argmax(1).cpu()
        t = y[i:i + batch_size].cpu()
        keep = t >= 0
        p, t = pred[keep], t[keep]
        correct += int((p == t).sum())
        total += int(keep.sum())
        for c in range(num_classes):
            inter[c] += float(((p == c) & (t == c)).sum())
            union[c] += float(((p == c) | (t == c)).sum())
    seen = union > 0
    return correct / max(1, total), float((inter[seen] / union[seen]).mean()) if seen.any() else float("nan")


# ---------------------------------------------------------------------------------------------
# Ownership decisions at a stated false-positive rate
# ---------------------------------------------------------------------------------------------
#
# A detector gives each suspect a continuous score (wm.methods: higher is more evidence of the
# owner). A decision is a threshold on it, set from a null population: scores of models the owner
# must not claim (independently trained unmarked models, wrong and near-miss keys, attacked twins).
# `threshold_at_fpr` lets at most a share FPR of the null through (decide `score > threshold`,
# strict, so ties with a null score are refused); `tpr_at_fpr` reports the marked suspects' TPR
# there with the empirical FPR and its one-sided Clopper-Pearson bound (with n null scores, none
# accepted, the FPR is bounded only at 1 - 0.05^(1/n): about 14 % for n = 20); `roc_auc` is the
# chance a marked suspect outscores a null one; `binomial_tail` the exact chance an unrelated model
# matches at least k of n fair-coin bits (the bit-reading methods' analytic null).


def _scores(values, what: str) -> np.ndarray:
    v = np.asarray(list(values), dtype=float).ravel()
    if len(v) == 0:
        raise ValueError(f"{what}: no scores")
    if not np.isfinite(v).all():
        raise ValueError(f"{what}: scores must be finite (got {v[~np.isfinite(v)][:3].tolist()})")
    return v


def fpr_upper(false_positives: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper–Pearson upper bound on a rate observed as FALSE_POSITIVES of N."""
    if n <= 0 or not 0 <= false_positives <= n:
        raise ValueError(f"false_positives={false_positives} of n={n}: need 0 ≤ k ≤ n and n ≥ 1")
    if false_positives == n:
        return 1.0
    return float(stats.beta.ppf(confidence, false_positives + 1, n - false_positives))


def threshold_at_fpr(null, fpr: float) -> float:
    """The smallest threshold t with at most ⌊FPR·n⌋ of the N null scores above it (decide
    `score > t`). Where FPR·n < 1 no null score may pass: t is the largest null score, and the
    FPR actually guaranteed is only what `fpr_upper(0, n)` says."""
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr={fpr} must be in [0, 1)")
    v = np.sort(_scores(null, "null population"))
    allowed = math.floor(fpr * len(v) + 1e-9)  # null scores allowed above the threshold
    return float(v[len(v) - 1 - allowed])


@dataclass(frozen=True)
class Decision:
    """Marked suspects against a null population at one target FPR."""

    target_fpr: float
    threshold: float
    tpr: float
    fpr: float
    """The empirical false-positive rate of the null population at the threshold."""
    fpr_upper: float
    """Its one-sided 95 % Clopper–Pearson upper bound."""
    n_marked: int
    n_null: int


def tpr_at_fpr(marked, null, fpr: float, confidence: float = 0.95) -> Decision:
    """TPR of the MARKED scores at the threshold set on the NULL scores for FPR."""
    m, z = _scores(marked, "marked suspects"), _scores(null, "null population")
    t = threshold_at_fpr(z, fpr)
    fp = int((z > t).sum())
    return Decision(fpr, t, float((m > t).mean()), fp / len(z), fpr_upper(fp, len(z), confidence), len(m), len(z))


def roc_auc(marked, null) -> float:
    """P(a marked score > a null score) + ½ P(equal): the Mann–Whitney form of the ROC AUC."""
    m, z = _scores(marked, "marked suspects"), _scores(null, "null population")
    greater = (m[:, None] > z[None, :]).mean()
    equal = (m[:, None] == z[None, :]).mean()
    return float(greater + 0.5 * equal)


def binomial_tail(matches: int, n: int, p: float = 0.5) -> float:
    """P(X ≥ MATCHES) for X ~ Binomial(N, P): how often an unrelated model reads at least that
    many of the key's N bits right by chance."""
    if n <= 0 or not 0 <= matches <= n:
        raise ValueError(f"matches={matches} of n={n}: need 0 ≤ matches ≤ n and n ≥ 1")
    return float(stats.binom.sf(matches - 1, n, p))
