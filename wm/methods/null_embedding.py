"""Li et al.'s null embedding (piracy-resistant watermarks), behind the method interface.

The owner's signature derives a ±λ pattern that is trained into the classifier from scratch; the
detector queries the suspect with null- and true-stamped held-out images. Score: the smaller of
the two agreements, min(acc_null, acc_true); verified where both reach the study's T (the paper's
rule). Own attack: piracy, a second party's null embedding fine-tuned into the stolen model.
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
    model = "smallcnn"
    twin_recipe, twin_model = "null_embedding", "smallcnn"
    rule = "acc_null and acc_true ≥ T on held-out images (the paper's verification)"
    own_attacks = {"piracy": "epochs of the pirate's embedding"}
    not_applicable = {"overwrite": "the null embedding has no keyed weights or outputs to overwrite; adding a "
                                   "second watermark is its piracy row"}

    def train_twin(self, setup: Setup):
        cfg, d = ne_config(setup), setup.data  # the same recipe, no stamped batches
        return ne.train_model(cfg, d["x_train"], d["y_train"], seed=setup.seed)[0]

    def mark(self, setup: Setup, twin):
        cfg, d = ne_config(setup), setup.data
        sig = cfg.owner(0).sign(cfg.timestamp)
        marked, _ = ne.train_model(cfg, d["x_train"], d["y_train"], seed=setup.seed, wm=cfg.watermark(sig))
        return marked, sig

    def detect(self, suspect, secret, setup: Setup) -> dict[str, float]:
        cfg, d = ne_config(setup), setup.data
        v = ne.verify(suspect, secret, d["x_test"], d["y_test"], cfg.n, cfg.lam, 10, cfg.threshold)
        return {"score": min(v.acc_null, v.acc_true), "wm_acc_null": v.acc_null, "wm_acc_true": v.acc_true,
                "verified": float(v.verified)}

    def utility(self, suspect, setup: Setup) -> float:
        return evaluate(suspect, setup.data["x_test"], setup.data["y_test"])

    def own_grid(self, attack: str, setup: Setup) -> list:
        return list(setup.budget["piracy_epochs"])

    def attack(self, attack: str, strength, suspect, trained: Trained, setup: Setup):
        if attack != "piracy":
            return super().attack(attack, strength, suspect, trained, setup)
        cfg, d, b = ne_config(setup), setup.data, setup.budget
        sig = cfg.owner(1).sign(cfg.timestamp)  # party 1: the pirate
        pirated = ne.pirate(suspect, cfg.watermark(sig), d["x_att"], d["y_att"], fraction=1.0, epochs=strength,
                            lr=b["piracy_lr"], seed=setup.seed, w_null=cfg.w_null, w_true=cfg.w_true,
                            batch_size=b["batch_size"], grad_clip=cfg.grad_clip)
        return pirated, self.detect(pirated, sig, setup)


register(NullEmbedding)
