"""WaterMAS (De Sousa Trias et al., ICPR 2024, reconstructed from the abstract): bits substituted
into keyed weights, held fixed while training sharpens the loss around them."""

from wm.methods import register
from wm.methods._keyed import KeyedWeights


class WaterMAS(KeyedWeights):
    name = "watermas"
    label = "WaterMAS (De Sousa Trias et al.)"


register(WaterMAS)
