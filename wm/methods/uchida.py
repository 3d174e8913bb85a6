"""Uchida et al. (2017): bits read through a secret projection of one layer's mean weights,
trained in with a regulariser. Score: the share of bits read back, 1 − BER."""

from __future__ import annotations

import dataclasses

from wm import watermas as wmas
from wm.methods import register
from wm.methods._keyed import PIRATE, KeyedWeights
from wm.methods._setups import wmas_config


class Uchida(KeyedWeights):
    name = "uchida"
    label = "Uchida et al."
    baseline_of = "watermas"
    own_attacks = {"piracy": "epochs of the thief's embedding"}
    not_applicable = {"overwrite": "the bits are read through a projection of a layer's mean kernel, not "
                                   "from keyed weights: there is no weight to overwrite (a thief's own "
                                   "projection is its piracy row)"}

    def ber(self, suspect, key) -> float:
        return wmas.uchida_ber(suspect, key)

    def random_key(self, model, key, seed: int):
        """Another projection and other bits on the owner's layer."""
        return wmas.draw_uchida_key(model, len(key.bits), seed=seed, layer=key.layer)

    @staticmethod
    def shifted(model, key):
        """The owner's projection read one input position over (its columns rolled by one)."""
        return dataclasses.replace(key, X=key.X.roll(1, dims=1))

    def thief_key(self, model, setup):
        # the owner's payload (the study's uchida_bits), the thief's own projection and bits
        return wmas.draw_uchida_key(model, wmas_config(setup).uchida_bits, seed=setup.seed + PIRATE)


register(Uchida)
