"""Li et al.'s null embedding (piracy-resistant watermarks), behind the method interface.

The owner's signature derives a ±λ pattern that is trained into the classifier from scratch; the
detector queries the suspect with null- and true-stamped held-out images. Score: the smaller of
the two agreements, min(acc_null, acc_true); verified where both reach the study's T (the paper's
rule). Own attack: piracy, a second party's null embedding fine-tuned into the stolen model.
"""

from __future__ import annotations

import dataclasses
import random

from wm import null_embedding as ne
from wm.methods import Method, Setup, Trained, register
from wm.methods._setups import ne_config
from wm.metrics import binomial_tail
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

    null_archs = ("smallcnn", "smallcnn_nobn")
    """The small CNN, and the same CNN without batch norm (biases, He init)."""

    def train_twin(self, setup: Setup):
        cfg, d = ne_config(setup), setup.data  # the same recipe, no stamped batches
        norm = "none" if self.arch(setup) == "smallcnn_nobn" else "batch"
        return ne.train_model(cfg, d["x_train"], d["y_train"], seed=setup.seed, norm=norm)[0]

    def owner_secret(self, setup: Setup):
        return ne_config(setup).owner(0).sign(ne_config(setup).timestamp)

    def mark(self, setup: Setup, twin):
        cfg, d = ne_config(setup), setup.data
        sig = self.owner_secret(setup)
        marked, _ = ne.train_model(cfg, d["x_train"], d["y_train"], seed=setup.seed, wm=cfg.watermark(sig))
        return marked, sig

    def detect(self, suspect, secret, setup: Setup) -> dict[str, float]:
        """SECRET: the owner's Signature (checked, then its pattern derived), or a pattern itself
        (a null population's wrong or near-miss pattern)."""
        cfg, d = ne_config(setup), setup.data
        if isinstance(secret, ne.Watermark):
            acc_null, acc_true = ne.watermark_accuracies(suspect, secret, d["x_test"], d["y_test"])
            ok = min(acc_null, acc_true) >= cfg.threshold
        else:
            v = ne.verify(suspect, secret, d["x_test"], d["y_test"], cfg.n, cfg.lam, 10, cfg.threshold)
            acc_null, acc_true, ok = v.acc_null, v.acc_true, v.verified
        # the exact chance that a model unrelated to the pattern sends this many true-stamped images
        # to the signature's class, were its answers uniform over the 10 classes
        target = (secret if isinstance(secret, ne.Watermark) else cfg.watermark(secret)).target
        n = int((d["y_test"] != target).sum())  # acc_true's images: those not already of the target class
        p = binomial_tail(round(acc_true * n), n, 0.1)
        return {"score": min(acc_null, acc_true), "wm_acc_null": acc_null, "wm_acc_true": acc_true, "p_value": p,
                "verified": float(ok)}

    def utility(self, suspect, setup: Setup) -> float:
        return evaluate(suspect, setup.data["x_test"], setup.data["y_test"])

    def null_secrets(self, trained: Trained, setup: Setup, n: int, seed: int) -> list:
        cfg = ne_config(setup)
        # other parties' real signatures (parties 2, 3, ...: 1 is the suite's pirate)
        out = [("random", cfg.watermark(ne.Owner.from_seed(f"null-{seed}-{i}", seed + i).sign(cfg.timestamp)))
               for i in range(n)]
        own = cfg.watermark(trained.secret)
        rng = random.Random(seed)
        for flips in (1, 2, 4, 8):  # the owner's square with a few of its ±λ bits inverted
            for _ in range(5):
                which = set(rng.sample(range(len(own.bits)), flips))
                out.append((f"near-miss: {flips} bits flipped",
                            dataclasses.replace(own, bits=tuple(1 - b if i in which else b for i, b in enumerate(own.bits)))))
        for dr, dc in ((1, 0), (0, 1), (-1, 0), (0, -1)):  # the owner's pattern a pixel off
            row, col = own.row + dr, own.col + dc
            if 0 <= row <= 28 - own.n and 0 <= col <= 28 - own.n:
                out.append(("near-miss: shifted by a pixel", dataclasses.replace(own, row=row, col=col)))
        return out

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
