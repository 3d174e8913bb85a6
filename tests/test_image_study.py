"""The image-processing chapter one seed at a time (wm.image_study): a one-seed run of a sweep gives
the same rows as that seed of a run over several seeds (so the merged chapter equals a single run),
and the chapter's tables read the same from the CSV a sweep merges."""

from __future__ import annotations

import pandas as pd
import pytest

from wm import image_processing as ip
from wm import image_study as ist
from wm import results
from wm.results import Results

pytestmark = pytest.mark.slow

TINY = dict(size=16, n_owner=32, n_attacker=32, n_test=16, batch_size=16, m_width=8, m_epochs=0.5, h_width=8,
            r_width=8, r_blocks=2, d_width=8, stage1_epochs=0.5, stage2_epochs=0.5, sm_width=8, sm_epochs=0.5,
            sm_archs=("unet",), sm_losses=(), ss_bits=(4,))


def _run(seed: int, seeds: int, out) -> pd.DataFrame:
    cfg = ip.Config.from_profile("smoke", seed=seed, seeds=seeds, **TINY)
    r = Results("image_processing", "smoke", cfg.as_dict())
    for s in range(seed, seed + seeds):
        ist.run_seed(cfg, s, r, "cpu")
    r.save(out)
    return results.load("image_processing", out)


def test_a_one_seed_run_repeats_its_seed_of_a_longer_run_and_reads_back_alike(tmp_path):
    both = _run(0, 2, tmp_path / "both")
    second = _run(1, 1, tmp_path / "second")
    cols = ["method", "model", "experiment", "attack", "strength", "seed", "metric", "case"]
    pd.testing.assert_frame_equal(both[both.seed == 1].sort_values(cols).reset_index(drop=True),
                                  second.sort_values(cols).reset_index(drop=True))
    t = ist.tables(both)
    assert len(t.sur) == 2 and set(t.ss.bits) == {4} and len(t.ss) == 2
    assert set(t.ctl.images) == {*ist.SOURCES, ist.UNMARKED_SURROGATE, ist.MARKED_SURROGATE}
    assert len(t.curve) == 2 * len(t.ctl.images.unique()) * 2 * len(ist.TAUS)  # seeds × images × rules × τ
    assert len(t.tv) == 2 * 3 and (t.task.psnr > 0).all()
