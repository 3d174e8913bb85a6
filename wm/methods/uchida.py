"""Uchida et al. (2017): bits read through a secret projection of one layer's mean weights,
trained in with a regulariser. Score: the share of bits read back, 1 − BER."""

from __future__ import annotations

from wm import watermas as wmas
from wm.methods import register
from wm.methods._keyed import KeyedWeights


class Uchida(KeyedWeights):
    name = "uchida"
    label = "Uchida et al."

    def score(self, suspect, secret, setup) -> float:
        return 1.0 - wmas.uchida_ber(suspect, secret)


register(Uchida)
