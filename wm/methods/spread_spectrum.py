"""The traditional baseline of the image study: additive spread-spectrum bits (Cox et al. 1997) on
every output of the deraining model, decoded blindly. Score: the share of bits decoded."""

from __future__ import annotations

import torch
from torch import nn

from wm import image_processing as ip
from wm.methods import Setup, Trained, register
from wm.methods._setups import ServiceMethod, outputs, train_service

N_BITS, PSNR = 64, 40.0
"""Payload and visibility of the mark: 64 bits at 40 dB (the suite's overwrite grid's weakest)."""


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

    def train(self, setup: Setup) -> Trained:
        m_net, icfg = train_service(setup)
        ss = ip.SpreadSpectrum.create(N_BITS, icfg.size, PSNR, setup.seed)
        return Trained(MarkedService(m_net, ss).eval(), m_net, ss)

    def score(self, suspect, secret, setup: Setup) -> float:
        return secret.bit_accuracy(outputs(suspect, setup))


register(SpreadSpectrumMethod)
