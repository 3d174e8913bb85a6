"""The image-processing chapter one seed at a time (wm.image_study): a one-seed run of a sweep gives
the same rows as that seed of a run over several seeds (so the merged chapter equals a single run),
and the chapter's tables read the same from the CSV a sweep merges."""

from __future__ import annotations

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
