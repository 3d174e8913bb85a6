"""Null populations: scores the owner's detector gives to what is not the owner's (issue 17).

Two of the three populations DESIGN.md names are built here from a trained method:

* `key_population`: the marked model read with secrets that are not the owner's (N random keys,
  signatures or logos, and near misses of the owner's: a few bits flipped, positions or patterns
  shifted), from `Method.null_secrets`;
* `model_population`: unmarked models trained independently (other seeds), read with the owner's
  secret, from `Method.train_twin`.

The third, attacked unmarked twins, is what the attack suite's control rows already are. Each
function returns one row per null member (case, seed, score, verified); `wm.metrics.tpr_at_fpr`
turns a population and the marked scores into a decision at a stated false-positive rate.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from wm.methods import Method, Setup, Trained
from wm.methods._setups import outputs


def key_population(method: Method, trained: Trained, setup: Setup, n: int, seed: int) -> pd.DataFrame:
    """The marked model scored with N random secrets and the owner's near misses (seeded by SEED)."""
    if n < 1:
        raise ValueError(f"n={n}: a key population needs at least one random key")
    suspect = trained.marked
    if method.kind == "image-service":  # the service's outputs once; each secret reads the same images
        suspect = outputs(suspect, setup)
    rows = []
    for case, secret in method.null_secrets(trained, setup, n, seed):
        d = method.detect(suspect, secret, setup)
        rows.append({"case": case, "seed": setup.seed, "score": d["score"], "verified": d["verified"]})
    return pd.DataFrame(rows)


def model_population(method: Method, trained: Trained, setup: Setup, seeds: list[int]) -> pd.DataFrame:
    """Unmarked models trained with the twin's recipe on the owner's data, one per seed of SEEDS
    (other initialisations and batch orders than the twin's), scored with the owner's secret."""
    rows = []
    for s in seeds:
        if s == setup.seed:
            raise ValueError(f"seed {s} is the marked model's own: the twin, not an independent model")
        model = method.train_twin(dataclasses.replace(setup, seed=s))
        d = method.detect(model, trained.secret, setup)
        rows.append({"case": "independent model", "seed": s, "score": d["score"], "verified": d["verified"]})
    return pd.DataFrame(rows)
