"""Decisions at a stated false-positive rate (wm.nulls.decisions) on tables made by hand, each
with a counter-example where the claim is false; the null-population build's parameters; and
when the suite may use a published population."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from wm import nulls, suite
from wm.methods import REGISTRY


def _table(marked: dict, keys, twins, near=(), method="watermas", seed=0) -> pd.DataFrame:
    """A suite table: MARKED {(attack, strength): score}, the key population, the twin's scores."""
    rows = [dict(method=method, model="smallcnn", experiment="suite", attack=a, strength=s, seed=seed,
                 metric="score", value=v, case="") for (a, s), v in marked.items()]
    rows += [dict(method=method, model="smallcnn", experiment=nulls.NULL_KEYS, attack="none", strength="", seed=seed,
                  metric="score", value=v, case=f"random #{i}") for i, v in enumerate(keys)]
    rows += [dict(method=method, model="smallcnn", experiment=nulls.NULL_KEYS, attack="none", strength="", seed=seed,
                  metric="score", value=v, case=f"near-miss: 1 bits flipped #{i}") for i, v in enumerate(near)]
    control = suite.control_model(REGISTRY[method])
    rows += [dict(method="none", model=control, experiment="suite", attack="prune", strength=str(i), seed=seed,
                  metric="score", value=v, case="") for i, v in enumerate(twins)]
    return pd.DataFrame(rows)


def _get(d, metric, attack="none", case="fpr=0.01"):
    return d[(d.metric == metric) & (d.attack == attack) & (d.case == case)].value.tolist()


def test_a_marked_model_above_every_null_is_detected_and_one_inside_it_is_not():
    rng = np.random.default_rng(0)
    keys, twins = rng.normal(0.5, 0.03, 1000), rng.normal(0.5, 0.03, 10)
    d = nulls.decisions(_table({("none", ""): 0.99, ("prune", "0.9"): 0.5}, keys, twins))
    assert _get(d, "tpr_at_fpr") == [1.0] and _get(d, "auc", case="auc") == [1.0]
    # counter-example: the attacked model scores like the null, so it is not detected at FPR 1 %
    assert _get(d, "tpr_at_fpr", "prune") == [0.0]
    assert 0.2 < _get(d, "auc", "prune", case="auc")[0] < 0.8
    pooled = d[(d.metric == "fpr") & d.case.str.startswith("fpr=0.01: pooled")].value.iloc[0]
    assert pooled <= 0.01
    upper = d[(d.metric == "fpr_upper") & d.case.str.startswith("fpr=0.001: pooled")].value.iloc[0]
    assert 0.001 < upper < 0.01  # 1 allowed of 1010: the bound is what 1010 draws can show


def test_a_threshold_set_on_too_few_nulls_says_so():
    """Counter-example to trusting FPR 0.1 %: with 20 null scores none may pass, and the upper
    bound on the FPR is 14 %, not 0.1 %."""
    d = nulls.decisions(_table({("none", ""): 0.99}, np.linspace(0.4, 0.6, 17), [0.5, 0.5, 0.5]))
    upper = d[(d.metric == "fpr_upper") & d.case.str.startswith("fpr=0.001: pooled")].value.iloc[0]
    assert upper == pytest.approx(0.139, abs=0.001)


def test_near_misses_are_reported_beside_the_threshold_not_pooled_into_it():
    keys, twins = np.full(200, 0.5), np.full(5, 0.5)
    d = nulls.decisions(_table({("none", ""): 0.99}, keys, twins, near=[0.98] * 20))
    assert _get(d, "tpr_at_fpr") == [1.0]  # pooled near misses would have lifted the threshold to 0.98
    near = d[(d.metric == "fpr") & d.case.str.contains("near-miss")]
    assert (near.value == 1.0).all()  # and they are all above it: reported, not hidden


def test_a_twin_that_scores_like_the_marked_model_is_a_false_positive():
    """Counter-example: a detector that fires on the attacked twin cannot detect at FPR 1 %."""
    keys = np.full(300, 0.5)
    d = nulls.decisions(_table({("none", ""): 0.9}, keys, [0.95] * 10))
    assert _get(d, "tpr_at_fpr") == [0.0]
    twin = d[(d.metric == "fpr") & d.case.str.startswith("fpr=0.01: unmarked twin")].value.iloc[0]
    assert twin == 0.0  # the threshold sits on the twins' score: none above it, but nor is the owner


def test_independent_models_join_the_pool_per_owner_seed():
    keys, twins = np.full(300, 0.5), np.full(5, 0.5)
    t = _table({("none", ""): 0.8}, keys, twins)
    models = pd.DataFrame([dict(method="watermas", model="smallcnn", experiment=nulls.NULL_MODELS, attack="none",
                                strength="", seed=s, metric="score", value=0.85, case=f"independent model {i}")
                           for s in (0, 1) for i in range(20)])
    d = nulls.decisions(t, models)
    assert _get(d, "tpr_at_fpr") == [0.0]  # 20 of 325 nulls above the owner: not detected at 1 %
    assert any(d.case.str.contains("independent models \\(n=20\\)"))


def test_the_build_parameters_are_checked():
    assert nulls.Config.from_profile("smoke", recipes="smallcnn").recipes == ("smallcnn",)
    with pytest.raises(ValueError, match="recipes"):
        nulls.Config.from_profile("smoke", recipes="nope")
    with pytest.raises(ValueError, match="first_member"):
        nulls.Config.from_profile("smoke", first_member=5)


def test_a_published_population_is_used_only_beside_its_own_budget(tmp_path, monkeypatch):
    from wm import results
    monkeypatch.setattr(results, "PUBLISHED_RESULTS", tmp_path)
    cfg = suite.Config.from_profile("smoke")
    assert nulls.published_models(cfg)[0] is None
    rows = [dict(study="nulls", method="watermas", model="smallcnn", experiment=nulls.NULL_MODELS, attack="none",
                 strength="", seed=0, metric="score", value=0.5, profile="smoke", case="independent model 200")]
    pd.DataFrame(rows).to_csv(tmp_path / "nulls.csv", index=False)
    (tmp_path / "nulls.json").write_text(json.dumps({}))
    models, note = nulls.published_models(cfg)
    assert models is not None and len(models) == 1 and "per seed" in note
    assert nulls.published_models(suite.Config.from_profile("smoke", n_train=1600))[0] is None  # another budget
    assert nulls.published_models(suite.Config.from_profile("smoke", seeds=2))[0] is None  # seed 1 not scored
    assert "profile" in nulls.published_models(suite.Config.from_profile("cpu"))[1]


def test_the_bit_and_signature_detectors_give_exact_p_values():
    """binomial p-values: all 64 bits right by chance is 2^-64; half of them is unremarkable."""
    from wm.metrics import binomial_tail
    assert binomial_tail(64, 64) == pytest.approx(2.0 ** -64)
    assert 0.4 < binomial_tail(32, 64) < 0.6
    assert binomial_tail(0, 10, 0.1) == 1.0
