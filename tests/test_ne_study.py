"""The null-embedding chapter one seed at a time (wm.ne_study): a one-seed run of a sweep gives
the same rows as that seed of a run over several seeds (so the merged chapter equals a single
run), and the chapter's tables read the same from the CSV a sweep merges as from the run itself."""

from __future__ import annotations

import pytest

from wm import ne_study
from wm import null_embedding as ne

pytestmark = pytest.mark.slow

TINY = dict(n_train=256, n_test=64, n_verify=64, epochs=0.25, batch_size=64, sweep_n_train=128, sweep_epochs=0.25,
            pirate_lrs=(0.01,), pirate_epochs=(0.25,), attack_epochs=0.25, sweep_lams=(1.0,), sweep_ns=(4,), width=8,
            n_random_signatures=3)


def test_a_one_seed_run_repeats_its_seed_of_a_longer_run_and_reads_back_alike(seed_runs):
    both = seed_runs("null_embedding", ne.Config, ne_study.run_seed, **TINY)
    cfg = ne.Config.from_profile("smoke", seeds=2, **TINY)
    read = ne_study.tables(both, cfg)
    assert list(read.fid.index) == [0, 1] and set(read.fp.control) == set(ne_study.FP_CONTROLS)
    # the pirate of seed s is party s+1: the owner's own claim is accepted or not, the pirate's is a claim of its own
    assert len(read.pir) == 2 * 2 and set(read.pir.start) == {"watermarked", "clean"}
    assert len(read.sw) == 2 * len(ne_study.sweep_points(cfg)) and (read.sw["overlap (px)"] >= 0).all()
    assert read.rem.strength.dtype == float and len(read.tl) == 2 * 2 * 3
