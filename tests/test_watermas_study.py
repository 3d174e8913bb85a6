"""The WaterMAS chapter one seed at a time (wm.watermas_study): a one-seed run of a sweep gives
the same rows as that seed of a run over several seeds, the chapter's tables read the same from
the CSV a sweep merges, and the cap is measured on validation images no model trained on."""

from __future__ import annotations

import pandas as pd
import pytest

from wm import watermas as wmas
from wm import watermas_study as ws

pytestmark = pytest.mark.slow

TINY = dict(models=("smallcnn",), n_train=256, n_val=64, n_test=64, large_n_test=64, large_n_train=128, epochs=0.25, width=8, batch_size=64, n_bits=32,
            uchida_bits=8, payloads=(16,), noise_k=(0.5,), prune_amounts=(0.5,), quant_bits=(4,), finetune_epochs=(0.25,),
            finetune_lrs=(0.01,), sweep_caps=(0.05,), sharpness_samples=32, sharpness_random=1)


def test_a_one_seed_run_repeats_its_seed_of_a_longer_run_and_reads_back_alike(seed_runs):
    both = seed_runs("watermas", wmas.Config, ws.run_seed, **TINY)
    cfg = wmas.Config.from_profile("smoke", seeds=2, **TINY)
    t = ws.tables(both, cfg)
    assert len(t.fid) == 2 * 5 and t.fid["sharpness (random)"].notna().sum() == 2 * 4
    assert sorted(t.caps.cap.unique()) == [0.01, 0.05] and len(t.caps) == 4
    # every sharpness-budget row is measured on the validation split, and no other row is
    budget = both[both.experiment == "sharpness_budget"]
    assert (budget.case == ws.VALIDATION).all() and not (both[both.experiment != "sharpness_budget"].case == ws.VALIDATION).any()
    assert set(t.pay.bits) == {16} and len(t.sec) == 2 * 3 * 3 and len(t.ctl) == 2 * 5


def test_the_validation_split_is_disjoint_from_the_training_images():
    with pytest.raises(ValueError, match="n_val"):
        wmas.Config.from_profile("smoke", n_train=59900, n_val=200)


def test_the_cap_rule_takes_the_largest_cap_within_the_budget():
    caps = pd.DataFrame({"cap": [0.005, 0.005, 0.01, 0.01, 0.05, 0.05], "cost (points)": [0.1, 0.3, 0.5, 1.2, 4.0, 4.5]})
    assert ws.chosen_cap(caps) == 0.01  # mean 0.85 ≤ 1
    assert ws.chosen_cap(caps.assign(**{"cost (points)": 5.0})) is None
