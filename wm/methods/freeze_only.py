"""Freeze-only: WaterMAS's ablation. The bits are written into the keyed weights, which are then
held fixed, with no sharpness term: what the keyed weights alone give."""

from wm.methods import register
from wm.methods._keyed import KeyedWeights


class FreezeOnly(KeyedWeights):
    name = "freeze_only"
    label = "freeze-only (WaterMAS without sharpness)"
    baseline_of = "watermas"


register(FreezeOnly)
