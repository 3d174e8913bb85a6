"""Held-out tuning, the image parts (wm.tuning's `image`, `suite`, `layout` and `thief`): the image
study's invisibility weight and its thief's surrogate width, layout and norm, and the attack
suite's invisibility weight and thief budget, each candidate trained on the owner's or the thief's
photos but the last and scored on patches of that held-out photo. wm.tuning holds the Config, the
null-embedding part, the tables and the rules; this module only trains and records.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import TYPE_CHECKING

from wm import data
from wm import image_processing as ip
from wm.progress import Laps
from wm.report import record

if TYPE_CHECKING:
    from wm.tuning import Config

WEIGHT, WIDTH = "tune w_basic", "tune sm_width"
"""The experiments of the table: the image study's invisibility weight (the owner's) and surrogate
width (the thief's)."""
SUITE_WEIGHT = "tune suite w_basic"
"""... and the attack suite's image-service weight, at the suite's smaller budget."""
LAYOUT = "tune sm_layout"
"""... and the ResNet surrogates' layout and norm (the thief's choice, like the width)."""
THIEF = "tune suite n_attacker_pairs"
"""... and the attack suite's thief's data budget (the thief's choice)."""
VALIDATION = "validation"
"""Every value of the tuning table is measured on a validation split (accuracy as metric test_acc,
as in WaterMAS's validation rows); `case` names the candidate and the split."""


def run_image(cfg: Config, s: int, results, device) -> dict[str, float]:
    """The image study's candidates for seed S: M, then stage 1 at every w_basic on the owner's
    photos but the last, scored on patches of that last one; then, on the service at
    cfg.service_w_basic, the thief's surrogates at every width on the thief's photos but the last,
    scored by how well they copy the service on patches of that last one."""
    c = dataclasses.replace(cfg.ip(), seed=s)
    own, own_val = owner_pairs(c, cfg, s, device)
    lap = Laps()

    m_net, _ = ip.train_target(c, own, seed=s)
    marks = weight_grid(c, cfg.ip_weights, m_net, own, own_val, WEIGHT, s, results, device)
    lap("w_basic")
    candidates = [(f"sm_width={width:g}", dict(width=width)) for width in cfg.ip_widths]
    service = service_of(c, cfg.service_w_basic, s, m_net, own, marks, device)
    thief_copies(c, cfg, s, m_net, service, WIDTH, candidates, results, device)
    lap("surrogate width")
    return lap.seconds


def run_layout(cfg: Config, s: int, results, device) -> dict[str, float]:
    """The ResNet surrogates' layout and norm for seed S: M and the service at cfg.service_w_basic,
    trained as in `run_image` (the same pairs and seeds), then the thief's surrogates in every layout
    with every norm at the image chapter's width, scored as `run_image` scores the widths."""
    c = dataclasses.replace(cfg.ip(), seed=s)
    own, _ = owner_pairs(c, cfg, s, device)
    lap = Laps()
    m_net, _ = ip.train_target(c, own, seed=s)
    service = service_of(c, cfg.service_w_basic, s, m_net, own, {}, device)
    lap("service")
    candidates = [(f"layout={layout}, norm={norm}", dict(width=c.sm_width, layout=layout, norm=norm))
                  for layout in cfg.ip_layouts for norm in cfg.ip_norms]
    thief_copies(c, cfg, s, m_net, service, LAYOUT, candidates, results, device)
    lap("surrogate layout")
    return lap.seconds


def owner_pairs(c: ip.Config, cfg: Config, s: int, device) -> tuple[ip.Pairs, ip.Pairs]:
    """Seed S's owner's pairs from the owner's photos but the last, and cfg.ip_n_val validation
    pairs from that last photo."""
    owner_photos, _ = ip.split_photos(data.photos("train"))
    return (ip.make_pairs(owner_photos[:-1], c.n_owner, c.size, s, c.rain, device),
            ip.make_pairs(owner_photos[-1:], cfg.ip_n_val, c.size, s + 3, c.rain, device))


def service_of(c: ip.Config, w_basic: float, s: int, m_net, own: ip.Pairs, marks: dict, device) -> ip.DeepWatermark:
    """The mark of the service a thief copies, at W_BASIC: taken from MARKS where it is a weight
    candidate, else trained here (stage 1 of recipe C) on the owner's pairs OWN as `weight_grid`
    trains one."""
    if w_basic in marks:
        return marks[w_basic]
    cs = dataclasses.replace(c, w_basic=w_basic)
    service = ip.new_watermark(cs, device)
    ip.train_stage1(cs, service, own.a, ip.deliver(ip.apply(m_net, own.a)), seed=s)
    return service


def thief_copies(c: ip.Config, cfg: Config, s: int, m_net, service: ip.DeepWatermark, experiment: str,
                 candidates: list[tuple[str, dict]], results, device) -> None:
    """The thief's surrogates of every architecture of cfg.ip_archs for every (case, settings) of
    CANDIDATES (settings: width, and a ResNet's layout and norm), trained with L2 on what SERVICE
    returns for the thief's photos but the last and scored by how well they copy it on patches of
    that last one (rows of EXPERIMENT). The logo plays no part."""
    _, attacker_photos = ip.split_photos(data.photos("train"))
    att = ip.make_pairs(attacker_photos[:-1], c.n_attacker, c.size, s + 1, c.rain, device)
    att_val = ip.make_pairs(attacker_photos[-1:], cfg.ip_n_val, c.size, s + 4, c.rain, device)
    delivered = service.embed(ip.deliver(ip.apply(m_net, att.a)))
    reference = service.embed(ip.deliver(ip.apply(m_net, att_val.a)))  # what the service returns the thief
    for i, arch in enumerate(cfg.ip_archs):
        for case, settings in candidates:
            build = {k: v for k, v in settings.items() if k != "width"}
            net, _ = ip.train_surrogate(dataclasses.replace(c, sm_width=settings["width"]), arch, "l2", att.a,
                                        delivered, seed=s + 100 + i, **build)
            copy = ip.deliver(ip.apply(net, att_val.a))
            record(results, "none", arch, experiment, ip.image_quality(copy, reference), seed=s,
                   case=f"{case} ({VALIDATION})")


def weight_grid(c: ip.Config, weights, m_net, own: ip.Pairs, own_val: ip.Pairs, experiment: str, s: int, results,
                device) -> dict[float, ip.DeepWatermark]:
    """Stage 1 of recipe C at every weight on the owner's pairs OWN (M's outputs for them), scored on
    the held-out OWN_VAL: B′ against B, and R's success on the marked and on the clean validation
    outputs (rows of EXPERIMENT). Returns the trained marks by weight."""
    b, b_val = (ip.deliver(ip.apply(m_net, p.a)) for p in (own, own_val))
    marks = {}
    for w in weights:
        cw = dataclasses.replace(c, w_basic=w)
        wmk = ip.new_watermark(cw, device)
        ip.train_stage1(cw, wmk, own.a, b, seed=s)
        marked = wmk.embed(b_val)
        case = f"w_basic={w:g} ({VALIDATION})"
        record(results, "deep", "unet", experiment, {**ip.image_quality(marked, b_val),
                                                     "success_rate": ip.verify(wmk, marked, c.tau).success_rate},
               seed=s, case=case)
        record(results, "none", "clean_output", experiment,
               {"success_rate": ip.verify(wmk, b_val, c.tau).success_rate}, seed=s, case=case)
        marks[w] = wmk
    return marks


def suite_recipe(cfg: Config, s: int, device) -> ip.Config:
    """The image recipe of the attack suite's services at this profile, for seed S: the image
    chapter's networks and loss weights at the suite's budget (wm.methods._setups.image_config)."""
    from wm.methods import Setup
    from wm.methods._setups import image_config
    budget = dict(cfg.suite().budget("image-service"), profile=cfg.profile)
    return image_config(Setup(s, device, budget))


def run_suite_image(cfg: Config, s: int, results, device) -> dict[str, float]:
    """The suite's weight for seed S: M and stage 1 at the suite's budget, trained on the owner's
    photos but the last (the suite's n_owner pairs from them) and scored on patches of that last one,
    as `run_image` scores the chapter's weights."""
    c = suite_recipe(cfg, s, device)
    own, own_val = owner_pairs(c, cfg, s, device)
    lap = Laps()
    m_net, _ = ip.train_target(c, own, seed=s)
    weight_grid(c, cfg.suite_weights, m_net, own, own_val, SUITE_WEIGHT, s, results, device)
    lap("suite w_basic")
    return lap.seconds


def run_thief(cfg: Config, s: int, results, device) -> dict[str, float]:
    """The suite thief's budget for seed S: M and the suite's deep service (its w_basic) at the
    suite's budget on the owner's photos but the last, then the suite's own surrogate attack
    (wm.attacks, at the suite's surrogate epochs) on the first n of the thief's pairs from its
    photos but the last, for every n of cfg.thief_pairs; scored by how well each copy matches the
    service on the thief's last photo, and (reported, not used by the rule) R's success on it.
    As in the suite, the surrogate trains for a number of epochs, so a larger budget also trains
    for more steps. R is the stage-1 extractor (the `cpu` suite's; where the suite's budget sets
    stage2, as `gpu` does, the suite's R is fine-tuned further and this column is not its R's)."""
    from wm import attacks
    c = suite_recipe(cfg, s, device)
    epochs = max(cfg.suite().surrogate_epochs)  # the suite's strongest surrogate
    own, _ = owner_pairs(c, cfg, s, device)
    _, attacker_photos = ip.split_photos(data.photos("train"))
    att = ip.make_pairs(attacker_photos[:-1], max(cfg.thief_pairs), c.size, s + 1, c.rain, device)
    att_val = ip.make_pairs(attacker_photos[-1:], cfg.ip_n_val, c.size, s + 4, c.rain, device)
    lap = Laps()
    m_net, _ = ip.train_target(c, own, seed=s)
    wmk = service_of(c, c.w_basic, s, m_net, own, {}, device)  # the suite's weight
    service = ip.Service(m_net, wmk.h, wmk.delta).eval()
    reference = ip.deliver(ip.apply(service, att_val.a))  # what the service returns the thief
    lap("service")
    for n in cfg.thief_pairs:
        thief = SimpleNamespace(seed=s, data={"att": ip.Pairs(a=att.a[:n], clean=att.clean[:n])})
        net = attacks.REGISTRY["surrogate"].run(service, epochs, thief, "image-service")
        copy = ip.deliver(ip.apply(net, att_val.a))
        record(results, "none", "unet", THIEF, {**ip.image_quality(copy, reference),
                                                "success_rate": ip.verify(wmk, copy, c.tau).success_rate},
               seed=s, case=f"n_attacker_pairs={n} ({VALIDATION})")
    lap("thief budget")
    return lap.seconds
