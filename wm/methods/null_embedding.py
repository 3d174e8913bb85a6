"""Li et al.'s null embedding (piracy-resistant watermarks), behind the method interface.

The owner's signature derives a ±λ pattern that is trained into the classifier from scratch; the
detector queries the suspect with null- and true-stamped held-out images. Score: the smaller of
the two agreements, min(acc_null, acc_true) (the paper verifies when both reach T).
"""

from __future__ import annotations

from wm import null_embedding as ne
from wm.methods import Method, Setup, Trained, register
from wm.methods._setups import ne_config
from wm.train import evaluate


class NullEmbedding(Method):
    name = "null_embedding"
    label = "null embedding (Li et al.)"
    kind = "classifier-black"
    unit = "test accuracy"

    def train(self, setup: Setup) -> Trained:
        cfg, d = ne_config(setup), setup.data
        sig = cfg.owner(0).sign(cfg.timestamp)
        marked, _ = ne.train_model(cfg, d["x_train"], d["y_train"], seed=setup.seed, wm=cfg.watermark(sig))
        twin, _ = ne.train_model(cfg, d["x_train"], d["y_train"], seed=setup.seed)  # same recipe, no stamps
        return Trained(marked, twin, (sig, cfg))

    def score(self, suspect, secret, setup: Setup) -> float:
        sig, cfg = secret
        v = ne.verify(suspect, sig, setup.data["x_test"], setup.data["y_test"], cfg.n, cfg.lam, 10, cfg.threshold)
        return min(v.acc_null, v.acc_true)

    def utility(self, suspect, setup: Setup) -> float:
        return evaluate(suspect, setup.data["x_test"], setup.data["y_test"])


register(NullEmbedding)
