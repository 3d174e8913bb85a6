"""wm.metrics' decisions: thresholds from null populations, TPR at a fixed FPR, its Clopper–Pearson bound,
ROC AUC and the binomial tail, checked against cases worked by hand and against scipy/brute force."""

import math

import numpy as np
import pytest

from wm import metrics as dec


def test_clopper_pearson_zero_of_n_is_the_rule_of_three_bound():
    # 0 of 20 random keys bounds the FPR only at about 14 % (one-sided 95 %)
    assert dec.fpr_upper(0, 20) == pytest.approx(1 - 0.05 ** (1 / 20))
    assert dec.fpr_upper(0, 20) == pytest.approx(0.1391, abs=1e-4)
    assert dec.fpr_upper(0, 1000) < 0.003 < dec.fpr_upper(1, 1000)
    assert dec.fpr_upper(5, 5) == 1.0
    with pytest.raises(ValueError, match="need 0"):
        dec.fpr_upper(3, 2)


def test_the_bound_covers_the_true_rate_at_least_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    p, n = 0.02, 200
    covered = [dec.fpr_upper(int(k), n) >= p for k in rng.binomial(n, p, size=2000)]
    assert np.mean(covered) >= 0.95


def test_threshold_lets_at_most_the_stated_share_of_nulls_through():
    null = np.arange(100) / 100  # 0.00 … 0.99
    t = dec.threshold_at_fpr(null, 0.05)
    assert (null > t).sum() == 5 and t == pytest.approx(0.94)
    # too few nulls for the rate asked: nothing may pass, the threshold is the largest null score
    assert dec.threshold_at_fpr(null, 0.001) == pytest.approx(0.99)
    with pytest.raises(ValueError, match="fpr"):
        dec.threshold_at_fpr(null, 1.0)
    with pytest.raises(ValueError, match="finite"):
        dec.threshold_at_fpr([0.1, float("nan")], 0.1)


def test_tpr_at_fpr_separated_and_overlapping_populations():
    null = np.linspace(0, 0.5, 1000)
    good = dec.tpr_at_fpr(np.full(30, 0.9), null, 0.01)
    assert good.tpr == 1.0 and good.fpr <= 0.01 and good.fpr_upper < 0.02 and good.n_null == 1000
    # a claim that is false: the "marked" scores look like the null ones, so TPR@1%FPR is small
    rng = np.random.default_rng(1)
    bad = dec.tpr_at_fpr(rng.uniform(0, 0.5, 300), null, 0.01)
    assert bad.tpr < 0.05
    # ties with the threshold are refused (strict >): a marked score equal to the largest null fails
    tie = dec.tpr_at_fpr([0.5], null, 0.0)
    assert tie.tpr == 0.0 and tie.fpr == 0.0


def test_roc_auc_matches_brute_force_and_its_extremes():
    rng = np.random.default_rng(2)
    m, z = rng.normal(1, 1, 40), rng.normal(0, 1, 50)
    brute = sum((a > b) + 0.5 * (a == b) for a in m for b in z) / (len(m) * len(z))
    assert dec.roc_auc(m, z) == pytest.approx(brute)
    assert dec.roc_auc([2, 3], [0, 1]) == 1.0 and dec.roc_auc([0, 1], [2, 3]) == 0.0
    assert dec.roc_auc([1, 1], [1, 1]) == 0.5


def test_binomial_tail_exact():
    n = 64
    assert dec.binomial_tail(n, n) == pytest.approx(2.0 ** -n)
    assert dec.binomial_tail(0, n) == pytest.approx(1.0)
    k = 51
    assert dec.binomial_tail(k, n) == pytest.approx(sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n)


def test_decision_metrics_are_rows_the_results_table_accepts():
    from wm import report
    from wm.results import Results
    r = Results("attack_suite", "smoke")
    for case, m in report.decision_metrics(np.full(10, 0.9), np.linspace(0, 0.5, 2000)):
        report.record(r, "watermas", "smallcnn", "decision", m, seed=0, case=case)
    f = r.frame().set_index(["case", "metric"]).value
    assert f["fpr=0.01", "tpr_at_fpr"] == 1.0 and f["fpr=0.001", "fpr"] <= 0.001 and f["all", "auc"] == 1.0
    assert f["fpr=0.001", "fpr_upper"] == pytest.approx(dec.fpr_upper(2, 2000))
