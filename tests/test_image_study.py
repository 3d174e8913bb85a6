"""The image-processing chapter one seed at a time (wm.image_study): a one-seed run of a sweep gives
the same rows as that seed of a run over several seeds (so the merged chapter equals a single run),
and the chapter's tables read the same from the CSV a sweep merges."""

from __future__ import annotations

import pandas as pd
import pytest

from wm import image_processing as ip
from wm import image_study as ist

pytestmark = pytest.mark.slow

TINY = dict(size=16, n_owner=32, n_attacker=32, n_test=16, batch_size=16, m_width=8, m_epochs=0.5, h_width=8,
            r_width=8, r_blocks=2, d_width=8, stage1_epochs=0.5, stage2_epochs=0.5, sm_width=8, sm_epochs=0.5,
            sm_archs=("unet",), sm_losses=(), ss_bits=(4,))


def test_a_one_seed_run_repeats_its_seed_of_a_longer_run_and_reads_back_alike(seed_runs):
    both = seed_runs("image_processing", ip.Config, ist.run_seed, **TINY)
    t = ist.tables(both)
    assert len(t.sur) == 2 and set(t.ss.bits) == {4} and len(t.ss) == 2
    assert set(t.ctl.images) == {*ist.SOURCES, ist.UNMARKED_SURROGATE, ist.MARKED_SURROGATE}
    assert len(t.curve) == 2 * len(t.ctl.images.unique()) * 2 * len(ist.TAUS)  # seeds × images × rules × τ
    assert len(t.tv) == 2 * 3 and (t.task.psnr > 0).all()


def _curve(rates):
    """A success-over-τ curve: RATES maps (images, τ) to the success rate on each of two seeds."""
    return pd.DataFrame([{"images": images, "tau": tau, "rule": "centred NC ≥ τ", "seed": s, "success rate": r}
                         for (images, tau), r in rates.items() for s in (0, 1)])


def test_the_success_rule_false_positive_rate_counts_unmarked_images_only():
    from wm import image_study
    curve = _curve({("B′ (watermarked outputs)", 0.8): 1.0, ("B (clean outputs)", 0.8): 0.02,
                    ("A (rainy inputs)", 0.8): 0.0, ("B′ (watermarked outputs)", 0.9): 1.0,
                    ("B (clean outputs)", 0.9): 0.0, ("A (rainy inputs)", 0.9): 0.0})
    t = image_study.tau_fpr(curve, 100, 0.8)
    assert "B′ (watermarked outputs)" not in t.index  # the marked images are not false positives
    assert t.loc["B (clean outputs)", "false positives"] == 4 and t.loc["pooled", "images scored"] == 400
    assert t.loc["pooled", "FPR"] == 0.01 and t.loc["pooled", "FPR upper (95 %)"] > 0.01
    assert image_study.tau_at_fpr(curve, 100, 0.01) == 0.8 and image_study.tau_at_fpr(curve, 100, 0.005) == 0.9
    # a rule that fires on clean outputs at every τ has no threshold at a low FPR
    noisy = curve.assign(**{"success rate": curve["success rate"].where(curve.images.str.contains("B′"), 0.5)})
    assert image_study.tau_at_fpr(noisy, 100, 0.01) is None
    with pytest.raises(ValueError, match="tau"):
        image_study.tau_fpr(curve, 100, 0.85)
