"""Zhang et al.'s deep watermark for image-processing services (AAAI 2020), behind the method
interface: an embedding net H hides the logo δ in every output of the deraining model M, and an
extractor R recovers it. The marked model is the service M∘H (δ fixed); its twin is M alone.

Score: the mean centred NC between R's outputs and δ over the delivered outputs (continuous).
Verified where R succeeds (centred NC ≥ τ) on at least `sr_threshold` of the outputs, the
paper's success rate: the owner can then show the logo in most outputs it queries.
Own attacks: overwrite (ServiceMethod), and piracy: the thief trains a deep watermark of its own
(H′ and R′ with the image study's recipe and the owner's stage-1 budget, its own QR-like δ′) on
the service's outputs for its inputs, and resells H′(service output); the owner's R must still
find the owner's logo under the thief's.
"""

from __future__ import annotations

import dataclasses
import weakref

from wm import image_processing as ip
from wm.methods import Setup, Trained, register
from wm.methods._setups import ServiceMethod, image_config, outputs

PIRATE, DEFENDER = 1000, 99
"""Seed offsets: the thief's mark; the defender's own surrogate in stage 2."""


class Deep(ServiceMethod):
    name = "deep"
    label = "deep watermark (Zhang et al.)"
    model = "unet_h"
    rule = "R finds the logo (centred NC ≥ τ) in at least sr_threshold of the outputs"
    own_attacks = {**ServiceMethod.own_attacks, "piracy": "epochs of the thief's stage 1"}
    _thieves: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    """Marked service → {epochs: the thief's mark trained on its outputs} (see `attack`)."""
    not_applicable = {"distill": "soft-label distillation needs class probabilities; the image service's "
                                 "black-box counterpart is the surrogate"}

    def mark(self, setup: Setup, twin):
        icfg, own = image_config(setup), setup.data["own"]
        b_own = ip.deliver(ip.apply(twin, own.a))
        wmk = ip.new_watermark(icfg, setup.device)
        ip.train_stage1(icfg, wmk, own.a, b_own, seed=setup.seed)
        if setup.budget["stage2"]:  # R fine-tuned on the defender's own surrogate of the marked service
            bw_own = wmk.embed(b_own)
            defender, _ = ip.train_surrogate(icfg, icfg.defender_sm, "l2", own.a, bw_own, seed=setup.seed + DEFENDER)
            ip.train_stage2(icfg, wmk, own.a, b_own, bw_own, ip.deliver(ip.apply(defender, own.a)), seed=setup.seed)
        return ip.Service(twin, wmk.h, wmk.delta).eval(), wmk

    def detect(self, suspect, secret, setup: Setup) -> dict[str, float]:
        e = ip.verify(secret, outputs(suspect, setup), image_config(setup).tau)
        return {"score": float(e.nc.mean()), "success_rate": e.success_rate,
                "verified": float(e.success_rate >= setup.budget["sr_threshold"])}

    def detect_many(self, suspect, secrets: list, setup: Setup) -> list[dict[str, float]]:
        """R run once per extractor (every secret of a key population shares the owner's R and H:
        only δ differs), then each δ scored against the same extractions."""
        x, tau, out, rows = outputs(suspect, setup), image_config(setup).tau, {}, []
        for s in secrets:
            if id(s.r) not in out:
                out[id(s.r)] = s.extract(x)
            e = ip.verify_extracted(s, out[id(s.r)], tau)
            rows.append({"score": float(e.nc.mean()), "success_rate": e.success_rate,
                         "verified": float(e.success_rate >= setup.budget["sr_threshold"])})
        return rows

    def null_secrets(self, trained: Trained, setup: Setup, n: int, seed: int) -> list:
        """The owner's R read against logos that are not the owner's: QR-like patterns, and the
        owner's logo shifted by a pixel (the key of this method is the pair R, δ)."""
        wmk, size = trained.secret, image_config(setup).size
        other = lambda delta: ip.DeepWatermark(wmk.h, wmk.r, delta.to(wmk.delta.device))  # noqa: E731
        out = [("random", other(ip.watermark_image("qr", size, seed + i))) for i in range(n)]
        for shift in ((1, 0), (0, 1)):
            out.append(("near-miss: shifted by a pixel", other(wmk.delta.roll(shift, dims=(-2, -1)))))
        return out

    def own_grid(self, attack: str, setup: Setup) -> list:
        if attack == "piracy":  # the thief's stage 1, at the owner's budget
            return [setup.budget["stage1_epochs"]]
        return super().own_grid(attack, setup)

    def attack(self, attack: str, strength, suspect, trained: Trained, setup: Setup):
        if attack != "piracy":
            return super().attack(attack, strength, suspect, trained, setup)
        # The twin's piracy control reuses the thief trained on the marked service's outputs (its
        # stage 1 is the suite's costliest step, 7.6 min a seed on 2 AMD cores): the control asks
        # whether the owner's R fires on an innocent service's outputs under the thief's H′, and an
        # H′ that has seen the owner's marked outputs is, if anything, likelier to make it fire.
        made = self._thieves.setdefault(trained.marked, {})
        if suspect is trained.twin and strength in made:
            thief = made[strength]
        else:
            thief = self.thief_mark(suspect, setup, strength)
            if suspect is trained.marked:
                made[strength] = thief
        out = thief.embed(outputs(suspect, setup))
        return out, self.detect(out, thief, setup)

    def thief_mark(self, net, setup: Setup, epochs: float) -> ip.DeepWatermark:
        """The thief's H′ and R′ (its own QR-like δ′) trained for EPOCHS of stage 1 on NET's
        delivered outputs for the first n_owner of the attacker's inputs: the owner's data
        budget, on the thief's data."""
        seed = setup.seed + PIRATE
        tcfg = dataclasses.replace(image_config(setup), seed=seed, watermark="qr", stage1_epochs=epochs)
        a = setup.data["att"].a[:setup.budget["n_owner"]]
        thief = ip.new_watermark(tcfg, a.device)
        ip.train_stage1(tcfg, thief, a, ip.deliver(ip.apply(net, a)), seed=seed)
        return thief


register(Deep)
