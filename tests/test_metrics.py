"""Tests for wm.metrics: every metric against an independent formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from wm import metrics


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _noisy_pair(shape: tuple[int, ...], seed: int = 0, sigma: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(seed)
    a = rng.random(shape)
    b = np.clip(a + sigma * rng.standard_normal(shape), 0.0, 1.0)
    return a, b


# ----------------------------------------------------------------------------- accuracy


def test_accuracy_on_logits_and_labels() -> None:
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [9.0, 0.0, 0.0]])
    labels = np.array([0, 1, 1, 2])
    assert metrics.accuracy(logits, labels) == pytest.approx(0.5)
    assert metrics.accuracy(torch.tensor(logits), torch.tensor(labels)) == pytest.approx(0.5)
    preds = np.array([0, 1, 2, 0])
    assert metrics.accuracy(preds, labels) == pytest.approx(0.5)
    assert metrics.accuracy(torch.tensor(preds), labels) == pytest.approx(0.5)


def test_accuracy_random_matches_count() -> None:
    rng = _rng(1)
    logits = rng.standard_normal((200, 7))
    labels = rng.integers(0, 7, size=200)
    expected = sum(int(np.argmax(logits[i]) == labels[i]) for i in range(200)) / 200
    assert metrics.accuracy(logits, labels) == pytest.approx(expected)


def test_accuracy_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        metrics.accuracy(np.zeros((3, 2)), np.zeros(4))


# ----------------------------------------------------------------------------- PSNR


def test_psnr_matches_formula_per_image() -> None:
    a, b = _noisy_pair((5, 3, 16, 16), seed=2)
    got = metrics.psnr(a, b)
    mse = ((a - b) ** 2).reshape(5, -1).mean(axis=1)
    expected = 10 * np.log10(1.0**2 / mse)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_psnr_data_range_and_single_images() -> None:
    a, b = _noisy_pair((1, 16, 16), seed=3)
    a255, b255 = a * 255.0, b * 255.0
    mse = np.mean((a255 - b255) ** 2)
    expected = 10 * np.log10(255.0**2 / mse)
    np.testing.assert_allclose(metrics.psnr(a255, b255, data_range=255.0), [expected], rtol=1e-10)
    # (H, W) grey image and tensors give the same single value.
    np.testing.assert_allclose(
        metrics.psnr(torch.tensor(a255[0]), torch.tensor(b255[0]), data_range=255.0), [expected], rtol=1e-10
    )


def test_psnr_identical_is_inf() -> None:
    a = _rng(4).random((2, 1, 8, 8))
    assert np.all(np.isinf(metrics.psnr(a, a.copy())))


def test_psnr_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((2, 1, 8, 8)), np.zeros((2, 1, 8, 9)))


# ----------------------------------------------------------------------------- SSIM


def _box_mean_valid(x: np.ndarray, win: int = 7) -> np.ndarray:
    """Mean over every win x win window fully inside the image (valid region)."""
    windows = np.lib.stride_tricks.sliding_window_view(x, (win, win))
    return windows.mean(axis=(-2, -1))


def _ssim_reference(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """Wang et al. (2004) SSIM written out directly for one 2-D image.

    7x7 uniform window, sample covariance N/(N-1), K1=0.01, K2=0.03, averaged
    over the window centres at least 3 pixels from the border -- which is
    exactly the set of fully-inside windows.
    """
    n = 49
    cov_norm = n / (n - 1)
    ux, uy = _box_mean_valid(x), _box_mean_valid(y)
    vx = cov_norm * (_box_mean_valid(x * x) - ux * ux)
    vy = cov_norm * (_box_mean_valid(y * y) - uy * uy)
    vxy = cov_norm * (_box_mean_valid(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def test_ssim_grey_matches_reference() -> None:
    a, b = _noisy_pair((4, 1, 20, 17), seed=5, sigma=0.2)
    got = metrics.ssim(a, b)
    expected = [_ssim_reference(a[i, 0], b[i, 0]) for i in range(4)]
    assert got.shape == (4,)
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-10)


def test_ssim_rgb_is_mean_over_channels() -> None:
    a, b = _noisy_pair((3, 3, 16, 16), seed=6, sigma=0.15)
    got = metrics.ssim(torch.tensor(a), torch.tensor(b))
    expected = [np.mean([_ssim_reference(a[i, c], b[i, c]) for c in range(3)]) for i in range(3)]
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-10)


def test_ssim_data_range() -> None:
    a, b = _noisy_pair((1, 1, 12, 12), seed=7)
    got = metrics.ssim(a * 255, b * 255, data_range=255.0)
    np.testing.assert_allclose(got, [_ssim_reference(a[0, 0] * 255, b[0, 0] * 255, 255.0)], rtol=1e-7)
    # SSIM is invariant to a joint rescaling of images and data range.
    np.testing.assert_allclose(got, metrics.ssim(a, b), rtol=1e-7)


def test_ssim_identical_is_one_and_noise_is_lower() -> None:
    a, b = _noisy_pair((2, 3, 16, 16), seed=8)
    np.testing.assert_allclose(metrics.ssim(a, a.copy()), [1.0, 1.0], rtol=1e-12)
    assert np.all(metrics.ssim(a, b) < 0.99)


def test_ssim_small_image_raises_clear_error() -> None:
    with pytest.raises(ValueError, match="7x7"):
        metrics.ssim(np.zeros((1, 1, 6, 10)), np.zeros((1, 1, 6, 10)))


def test_ssim_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((1, 3, 8, 8)), np.zeros((1, 1, 8, 8)))


# ----------------------------------------------------------------------------- NC


def test_nc_centred_matches_corrcoef() -> None:
    rng = _rng(9)
    a = rng.random((6, 1, 8, 8))
    b = 0.5 * a + rng.random((6, 1, 8, 8))
    got = metrics.nc(a, b, centred=True)
    expected = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(6)]
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_nc_uncentred_matches_dot_formula() -> None:
    rng = _rng(10)
    a = rng.standard_normal((5, 32))
    b = rng.standard_normal((5, 32))
    got = metrics.nc(torch.tensor(a), torch.tensor(b), centred=False)
    expected = [a[i] @ b[i] / np.sqrt((a[i] @ a[i]) * (b[i] @ b[i])) for i in range(5)]
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_nc_blank_logo_high_uncentred_zero_centred() -> None:
    logo = np.ones((1, 10, 10))
    logo[0, :2, :] = 0.0  # 80% white
    blank = np.ones_like(logo)
    assert metrics.nc(blank, logo, centred=False)[0] == pytest.approx(np.sqrt(0.8))
    assert metrics.nc(blank, logo, centred=True)[0] == 0.0
    assert metrics.nc(np.zeros((1, 5)), np.ones((1, 5)), centred=False)[0] == 0.0


def test_nc_single_vector_and_mismatch() -> None:
    v = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(metrics.nc(v, 2 * v, centred=False), [1.0])
    np.testing.assert_allclose(metrics.nc(v, -v, centred=True), [-1.0])
    with pytest.raises(ValueError):
        metrics.nc(np.zeros((2, 4)), np.zeros((2, 5)), centred=True)


# ----------------------------------------------------------------------------- BER


def test_ber_matches_count_of_differing_bits() -> None:
    rng = _rng(11)
    a = rng.integers(0, 2, size=257)
    b = rng.integers(0, 2, size=257)
    n_diff = sum(int(x != y) for x, y in zip(a.tolist(), b.tolist()))
    assert metrics.ber(a, b) == pytest.approx(n_diff / 257)
    assert metrics.ber(a.astype(bool), torch.tensor(b)) == pytest.approx(n_diff / 257)
    assert metrics.bit_accuracy(a, b) == pytest.approx(1 - n_diff / 257)
    assert metrics.ber(a, a) == 0.0
    assert metrics.ber(a, 1 - a) == 1.0


def test_ber_rejects_mismatch_and_non_bits() -> None:
    with pytest.raises(ValueError):
        metrics.ber(np.zeros(8), np.zeros(9))
    with pytest.raises(ValueError):
        metrics.ber(np.array([0.3, 1.0]), np.array([0, 1]))


# ----------------------------------------------------------------------------- mean_ci


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_ci_matches_scipy_interval(confidence: float) -> None:
    values = _rng(12).normal(3.0, 2.0, size=7)
    mean, half = metrics.mean_ci(values, confidence=confidence)
    lo, hi = stats.t.interval(confidence, df=6, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean())
    assert half == pytest.approx((hi - lo) / 2)
    assert mean - half == pytest.approx(lo)


def test_mean_ci_single_value_and_empty() -> None:
    mean, half = metrics.mean_ci([0.7])
    assert mean == pytest.approx(0.7)
    assert np.isnan(half)
    with pytest.raises(ValueError):
        metrics.mean_ci([])
