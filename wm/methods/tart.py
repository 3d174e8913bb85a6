"""TART (Tartaglione et al., ICPR 2020), WaterMAS's ancestor: the keyed weights held fixed while
noisy replicas of them make the loss sensitive to their values."""

from wm.methods import register
from wm.methods._keyed import KeyedWeights


class Tart(KeyedWeights):
    name = "tart"
    label = "TART (Tartaglione et al.)"
    baseline_of = "watermas"


register(Tart)
