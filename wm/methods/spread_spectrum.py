"""The traditional baseline of the image study: additive spread-spectrum bits (Cox et al. 1997) on
every output of the deraining model, decoded blindly. Score: the share of bits decoded; verified
where the decoded bits reach the binomial bound `ber_threshold(N_BITS, ber_fpr)`, as for the
keyed-weight methods."""

from __future__ import annotations

import random

import torch
from torch import nn

from wm import image_processing as ip
from wm.methods import Setup, register
from wm.methods._setups import ServiceMethod, image_config, outputs
from wm.metrics import ber_threshold

N_BITS, PSNR = 64, 40.0
"""Payload of the mark (64 bits), and its visibility where the budget's `ss_psnr` is None and no deep
mark set it (a Setup used outside the suite): 40 dB, the suite's overwrite grid's weakest. The
suite marks at the deep mark's measured PSNR (wm.suite.Config.ss_psnr)."""


class MarkedService(nn.Module):
    """M with the spread-spectrum mark added to every output."""

    def __init__(self, m: nn.Module, ss: ip.SpreadSpectrum):
        super().__init__()
        self.m, self.ss = m, ss

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.m(a).clamp(0, 1) + self.ss.mark().to(a.device)


class SpreadSpectrumMethod(ServiceMethod):
    name = "spread_spectrum"
    label = "spread spectrum (Cox et al.)"
    baseline_of = "deep"
    matched_cost = ("ss_psnr", "psnr")
    model = "unet_ss"
    rule = "bit accuracy over the outputs ≥ 1 − the binomial bound of ber_fpr for 64 bits"
    not_applicable = {"distill": "soft-label distillation needs class probabilities; the image service's "
                                 "black-box counterpart is the surrogate",
                      "piracy": "a thief's own spread-spectrum mark on the outputs is the overwrite row"}

    def mark(self, setup: Setup, twin):
        ss = self.owner_secret(setup)
        return MarkedService(twin, ss).eval(), ss

    def owner_secret(self, setup: Setup):
        # the PSNR only scales the mark: decoding reads the signs of correlations, so a null population
        # scored with this secret (wm.nulls) does not depend on it
        psnr = setup.budget.get("ss_psnr")
        return ip.SpreadSpectrum.create(N_BITS, image_config(setup).size, PSNR if psnr is None else psnr, setup.seed)

    def detect(self, suspect, secret, setup: Setup) -> dict[str, float]:
        acc = secret.bit_accuracy(outputs(suspect, setup))
        # bit accuracy averaged over the outputs: the owner reads every output and pools the bits
        return {"score": acc, "bit_acc": acc,
                "verified": float(1 - acc <= ber_threshold(N_BITS, setup.budget["ber_fpr"]))}


    def null_secrets(self, trained, setup: Setup, n: int, seed: int) -> list:
        own, size = trained.secret, image_config(setup).size
        out = [("random", ip.SpreadSpectrum.create(N_BITS, size, PSNR, seed + i)) for i in range(n)]
        rng = random.Random(seed)
        for flips in (1, 2, 4, 8):  # the owner's patterns, a few of its bits claimed wrongly
            for _ in range(5):
                bits = own.bits.clone()
                bits[rng.sample(range(N_BITS), flips)] ^= 1
                out.append((f"near-miss: {flips} bits flipped", ip.SpreadSpectrum(bits, own.patterns, own.alpha)))
        out.append(("near-miss: shifted by a pixel",
                    ip.SpreadSpectrum(own.bits, own.patterns.roll(1, dims=-1), own.alpha)))
        return out


register(SpreadSpectrumMethod)
