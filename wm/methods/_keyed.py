"""What WaterMAS and its baselines share behind the method interface (not a method itself):
training with wm.watermas' recipe, scoring by the share of the key's bits read back, and their
own attacks (overwrite, where the bits sit in keyed weights; piracy, a thief's key of the same
method trained into the stolen weights)."""

from __future__ import annotations

import copy
import dataclasses
import random

from wm import watermas as wmas
from wm.methods import Method, Setup, Trained
from wm.methods._setups import wmas_config
from wm.metrics import ber_threshold, binomial_tail
from wm.train import TrainConfig, evaluate, fit

PIRATE, OVERWRITE = 1000, 7
"""Seed offsets: the thief's key and the overwrite's random values get streams of their own."""


class KeyedWeights(Method):
    """A white-box mark in keyed weights, trained from scratch by wm.watermas.train(method=name).
    Score: the share of the key's bits read back, 1 − BER (chance: 0.5). Verified where the BER is
    at most `ber_threshold(n_bits, ber_fpr)`: the BER a model unrelated to the key (its bits fair
    coins) reaches with probability ≤ ber_fpr (the suite's Config)."""

    kind = "classifier-white"
    unit = "test accuracy"
    model = "smallcnn"
    twin_recipe = twin_model = "smallcnn"
    rule = "BER ≤ the binomial bound of ber_fpr (an unrelated model reads its bits as fair coins)"
    own_attacks = {"overwrite": "keyed weights overwritten", "piracy": "epochs of the thief's embedding"}
    null_archs = ("smallcnn", "smallcnn_nobn")
    """The small CNN, and the same CNN without batch norm (biases, He init): other layers, the
    same conv shapes, so that every key of these methods reads it."""

    def train_twin(self, setup: Setup):
        # the same recipe with nothing written (wm.watermas' method `none`: the key is drawn, unused)
        cfg, d = wmas_config(setup), setup.data
        norm = "none" if self.arch(setup) == "smallcnn_nobn" else "batch"
        return wmas.train(cfg, "none", d["x_train"], d["y_train"], seed=setup.seed, norm=norm)[0]

    def owner_secret(self, setup: Setup):
        # positions and bits depend on the architecture, the seed and the payload only
        return wmas.fresh(wmas_config(setup), self.name, setup.seed)[1]

    def mark(self, setup: Setup, twin):
        cfg, d = wmas_config(setup), setup.data
        marked, key, _ = wmas.train(cfg, self.name, d["x_train"], d["y_train"], seed=setup.seed)
        return marked, key

    def ber(self, suspect, key) -> float:
        return wmas.ber(suspect, key)

    def detect(self, suspect, secret, setup: Setup) -> dict[str, float]:
        b, n = self.ber(suspect, secret), len(secret.bits)
        bound = ber_threshold(n, setup.budget["ber_fpr"])
        # the exact chance that a model unrelated to the key reads this many bits right (fair coins)
        p = binomial_tail(round((1.0 - b) * n), n)
        return {"score": 1.0 - b, "ber": b, "p_value": p, "verified": float(b <= bound)}

    def utility(self, suspect, setup: Setup) -> float:
        return evaluate(suspect, setup.data["x_test"], setup.data["y_test"])

    def null_secrets(self, trained: Trained, setup: Setup, n: int, seed: int) -> list:
        key, rng = trained.secret, random.Random(seed)
        out = [("random", self.random_key(trained.marked, key, seed + i)) for i in range(n)]
        for flips in (1, 2, 4, 8):  # the owner's positions, some of its bits claimed wrongly
            for _ in range(5):
                out.append((f"near-miss: {flips} bits flipped", self.flipped(key, rng.sample(range(len(key.bits)), flips))))
        out.append(("near-miss: positions shifted by one", self.shifted(trained.marked, key)))
        return out

    def random_key(self, model, key, seed: int):
        """A key of the owner's size drawn afresh (other positions, other bits)."""
        return wmas.draw_key(model, len(key.bits), seed=seed, kappa=key.kappa)

    @staticmethod
    def flipped(key, which: list[int]):
        bits = tuple(1 - b if i in which else b for i, b in enumerate(key.bits))
        return dataclasses.replace(key, bits=bits)

    @staticmethod
    def shifted(model, key):
        """Each keyed position moved to the next weight of its tensor (the owner's bits kept)."""
        sizes = dict((name, p.numel()) for name, p in model.named_parameters())
        idx = tuple((i + 1) % sizes[name] for name, i in zip(key.names, key.indices))
        return dataclasses.replace(key, indices=idx)

    def own_grid(self, attack: str, setup: Setup) -> list:
        return list(wmas.OVERWRITE_MODES) if attack == "overwrite" else list(setup.budget["piracy_epochs"])

    def attack(self, attack: str, strength, suspect, trained: Trained, setup: Setup):
        if attack == "overwrite":  # the owner's key intercepted: its weights negated, zeroed or redrawn
            return wmas.overwrite(suspect, trained.secret, strength, seed=setup.seed + OVERWRITE), None
        if attack == "piracy":
            pirated, key = self.reembed(suspect, setup, strength)
            return pirated, self.detect(pirated, key, setup)
        return super().attack(attack, strength, suspect, trained, setup)

    def thief_key(self, model, setup: Setup):
        return wmas.draw_key(model, setup.budget["n_bits"], seed=setup.seed + PIRATE, kappa=wmas_config(setup).kappa)

    def reembed(self, model, setup: Setup, epochs: float):
        """A copy of MODEL carrying the thief's own key of this method (drawn on the stolen
        weights, values written), fine-tuned on the attacker's data with the method's hooks at a
        constant learning rate."""
        cfg, d, b = wmas_config(setup), setup.data, setup.budget
        pirated = copy.deepcopy(model)
        key = self.thief_key(pirated, setup)
        if isinstance(key, wmas.Key):
            wmas.embed_values(pirated, key)
        seed = setup.seed + PIRATE
        tc = TrainConfig(epochs=epochs, lr=b["piracy_lr"], batch_size=b["batch_size"], weight_decay=cfg.weight_decay,
                         seed=seed, schedule="constant")
        fit(pirated, d["x_att"], d["y_att"], tc, hooks=wmas.make_hooks(self.name, key, cfg, seed))
        return pirated, key
