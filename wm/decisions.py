"""Ownership decisions at a stated false-positive rate (issue 17's statistics, no training here).

A detector gives each suspect a continuous score (wm.methods: higher is more evidence of the
owner). A decision is a threshold on that score, set from a *null population*: scores of models
the owner must not claim (independently trained unmarked models, wrong and near-miss keys,
attacked twins). This module turns scores into decisions and reports them the way a reviewer
asks for:

* `threshold_at_fpr`: the threshold that lets at most a share FPR of the null population through
  (the decision is `score > threshold`, strict, so ties with a null score are refused);
* `tpr_at_fpr`: the true-positive rate of marked suspects at that threshold, with the empirical
  false-positive rate and its one-sided Clopper–Pearson upper bound (`fpr_upper`): with n null
  scores, none accepted, the FPR is bounded only at 1 − 0.05^(1/n) (about 14 % for n = 20);
* `roc_auc`: the probability that a marked suspect outscores a null one (ties count one half);
* `binomial_tail`: the exact chance that an unrelated model matches at least k of n fair-coin
  bits, the bit-reading methods' analytic null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


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
