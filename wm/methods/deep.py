"""Zhang et al.'s deep watermark for image-processing services (AAAI 2020), behind the method
interface: an embedding net H hides the logo δ in every output of the deraining model M, and an
extractor R recovers it. The marked model is the service M∘H (δ fixed); its twin is M alone.
Score: the mean centred NC between R's outputs and δ over the delivered outputs (continuous; the
paper's success rate, the share of outputs with NC ≥ τ, is a threshold on the same numbers)."""

from __future__ import annotations

from wm import image_processing as ip
from wm.methods import Setup, Trained, register
from wm.methods._setups import ServiceMethod, outputs, train_service


class Deep(ServiceMethod):
    name = "deep"
    label = "deep watermark (Zhang et al.)"

    def train(self, setup: Setup) -> Trained:
        m_net, icfg = train_service(setup)
        own = setup.data["own"]
        wmk = ip.new_watermark(icfg, setup.device)
        ip.train_stage1(icfg, wmk, own.a, ip.deliver(ip.apply(m_net, own.a)), seed=setup.seed)
        return Trained(ip.Service(m_net, wmk.h, wmk.delta).eval(), m_net, (wmk, icfg.tau))

    def score(self, suspect, secret, setup: Setup) -> float:
        wmk, tau = secret
        return float(ip.verify(wmk, outputs(suspect, setup), tau).nc.mean())


register(Deep)
