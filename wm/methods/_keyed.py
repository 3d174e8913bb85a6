"""What WaterMAS and its baselines share behind the method interface (not a method itself):
training with wm.watermas' recipe and scoring by the share of the key's bits read back."""

from __future__ import annotations

from wm import watermas as wmas
from wm.methods import Method, Setup, Trained
from wm.methods._setups import wmas_config
from wm.train import evaluate


class KeyedWeights(Method):
    """A white-box mark in keyed weights, trained from scratch by wm.watermas.train(method=name).
    Score: the share of the key's bits read back, 1 − BER (chance: 0.5)."""

    kind = "classifier-white"
    unit = "test accuracy"

    def train(self, setup: Setup) -> Trained:
        cfg, d = wmas_config(setup), setup.data
        marked, key, _ = wmas.train(cfg, self.name, d["x_train"], d["y_train"], seed=setup.seed)
        twin, _, _ = wmas.train(cfg, "none", d["x_train"], d["y_train"], seed=setup.seed)
        return Trained(marked, twin, key)

    def score(self, suspect, secret, setup: Setup) -> float:
        return 1.0 - wmas.ber(suspect, secret)

    def utility(self, suspect, setup: Setup) -> float:
        return evaluate(suspect, setup.data["x_test"], setup.data["y_test"])
