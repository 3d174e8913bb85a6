"""The image-processing chapter, one seed at a time, and its tables read back from the results.

A seed s repeats the whole chapter: its own patches (owner's, attacker's and test pairs drawn with
seeds s, s+1, s+2), the protected model M, the embedder H and extractor R, every surrogate the
thief trains, the spread-spectrum baseline and the TV service, all seeded by s. `run_seed` trains
and measures, recording each number in a results table; the chapter builds every table, figure
and verdict from that table (`tables`), so that one run over three seeds and a sweep of three
one-seed runs (`python -m wm sweep image_processing --grid seed=0,1,2 -p seeds 1`, shown with
`merged`) give the same chapter, at the same CPU thread count. The two figures that need the
trained networks (example patches, the per-image NC) are drawn for the chapter's first seed only,
by its run.
"""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import pandas as pd

from wm import data, plots
from wm import image_processing as ip
from wm.progress import Laps
from wm.report import by_metric, record

TAUS = tuple(round(0.5 + 0.01 * i, 2) for i in range(50))
"""The thresholds of the success-over-τ curve."""
SOURCES = {"B′ (watermarked outputs)": ("deep", "unet"), "A (rainy inputs)": ("none", "rainy_input"),
           "B (clean outputs)": ("none", "clean_output"), "clean photos": ("none", "photo")}
"""The test images R reads, with the (method, model) of their rows."""
UNMARKED_SURROGATE = "surrogate of unwatermarked B"
MARKED_SURROGATE = "surrogate of B′ (U-Net, L2)"
EXAMPLE_FIGURES = ("image_processing_grid", "image_processing_controls")
"""Drawn by the run of the chapter's first seed (they need its networks)."""


def surrogate_settings(cfg: ip.Config) -> list[tuple[str, str]]:
    """(architecture, loss) of every surrogate: each architecture with L2, then the U-Net with
    each further loss."""
    return [(arch, "l2") for arch in cfg.sm_archs] + [("unet", loss) for loss in cfg.sm_losses if loss != "l2"]


def run_seed(cfg: ip.Config, s: int, results, device, vgg_file=None, example: bool = False) -> dict[str, float]:
    """Every experiment of the chapter for seed S, recorded in RESULTS (a wm.results.Results).
    VGG_FILE: ImageNet VGG-19 weights for the perceptual surrogate loss, or None (that setting is
    then not run). EXAMPLE: also draw the figures that need this seed's networks. Returns the
    seconds of each experiment (kept out of the table)."""
    c = dataclasses.replace(cfg, seed=s)  # every network, pattern and draw of the study is seeded by c.seed
    owner_photos, attacker_photos = ip.split_photos(data.photos("train"))
    own = ip.make_pairs(owner_photos, c.n_owner, c.size, s, c.rain, device)
    att = ip.make_pairs(attacker_photos, c.n_attacker, c.size, s + 1, c.rain, device)
    test = ip.make_pairs(data.photos("test"), c.n_test, c.size, s + 2, c.rain, device)
    lap = Laps()

    def add(method, model, experiment, metrics, **kw):
        record(results, method, model, experiment, metrics, seed=s, **kw)

    # the protected model M, and H and R trained on its outputs (stage 1)
    m_net, _ = ip.train_target(c, own, seed=s)
    B = {name: ip.deliver(ip.apply(m_net, p.a)) for name, p in (("own", own), ("att", att), ("test", test))}
    add("none", "rainy_input", "task", ip.image_quality(test.a, test.clean))
    add("none", "unet", "task", ip.image_quality(B["test"], test.clean))
    wmk = ip.new_watermark(c, device)
    ip.train_stage1(c, wmk, own.a, B["own"], seed=s)
    BW = {name: wmk.embed(b) for name, b in B.items()}  # B′ as the service delivers it
    r_stage1 = ip.DeepWatermark(wmk.h, copy.deepcopy(wmk.r), wmk.delta)  # kept to compare with stage 2
    inv = ip.image_quality(BW["test"], B["test"])
    images = dict(zip(SOURCES, (BW["test"], test.a, B["test"], test.clean)))
    for name, x in images.items():
        add(*SOURCES[name], "stage1", ip.verify(r_stage1, x, c.tau).metrics(), case=name)
    lap("M and stage 1")

    # the thief's surrogates on the watermarked outputs, then stage 2 (R fine-tuned on the defender's own)
    perceptual = ip.Perceptual(vgg_file).to(device) if vgg_file else None
    outputs, quality = {}, {}
    for i, (arch, loss) in enumerate(surrogate_settings(c)):
        if loss == "perc_adv" and perceptual is None:
            continue
        net, _ = ip.train_surrogate(c, arch, loss, att.a, BW["att"], seed=s + 100 + i, perceptual=perceptual)
        outputs[arch, loss] = ip.deliver(ip.apply(net, test.a))
        quality[arch, loss] = ip.image_quality(outputs[arch, loss], BW["test"])  # how well the thief copied the service
    defender, _ = ip.train_surrogate(c, c.defender_sm, "l2", own.a, BW["own"], seed=s + 99)
    ip.train_stage2(c, wmk, own.a, B["own"], BW["own"], ip.deliver(ip.apply(defender, own.a)), seed=s)
    for (arch, loss), out in outputs.items():
        add("deep", arch, "surrogate_stage1", ip.verify(r_stage1, out, c.tau).metrics(), attack="surrogate", strength=loss)
        add("deep", arch, "surrogate", {**ip.verify(wmk, out, c.tau).metrics(), "psnr": quality[arch, loss]["psnr"]},
            attack="surrogate", strength=loss)
    lap("surrogates and stage 2")

    # controls: R (after stage 2) where it must fail, and success over τ with and without amplitude
    ctrl_net, _ = ip.train_surrogate(c, "unet", "l2", att.a, B["att"], seed=s + 98)
    images[UNMARKED_SURROGATE] = ip.deliver(ip.apply(ctrl_net, test.a))
    if ("unet", "l2") in outputs:
        images[MARKED_SURROGATE] = outputs["unet", "l2"]
    extractions = {name: ip.verify(wmk, x, c.tau) for name, x in images.items()}
    for name, e in extractions.items():
        method, model = SOURCES.get(name, ("deep" if name == MARKED_SURROGATE else "none", "unet"))
        surrogate = dict(attack="surrogate", strength="l2") if name.startswith("surrogate") else {}
        experiment = "invisibility" if name.startswith("B′") else "control" if name != MARKED_SURROGATE else "marked_surrogate"
        add(method, model, experiment, {**e.metrics(), **(inv if name.startswith("B′") else {})}, case=name, **surrogate)
        curve = e.success_over(TAUS)
        for tau, nc_rate, amp_rate in curve.itertuples(index=False):
            add(method, model, "tau_curve", {"success_rate": nc_rate, "success_rate_amp": amp_rate}, case=f"{name}|{tau:g}",
                **surrogate)
    lap("controls")

    # the traditional baseline: an additive spread-spectrum mark at the deep mark's PSNR, and a surrogate on it
    ss_psnr = c.ss_psnr if c.ss_psnr is not None else inv["psnr"]
    for i, bits in enumerate(c.ss_bits):
        ss = ip.SpreadSpectrum.create(bits, c.size, ss_psnr, s)
        marked = {name: ss.embed(b) for name, b in B.items()}
        net, _ = ip.train_surrogate(c, "unet", "l2", att.a, marked["att"], seed=s + 200 + i)
        method = f"spread_spectrum(L={bits})"  # the payload in the method's name, as WaterMAS's sweeps do
        add(method, "additive", "traditional", {"psnr": ip.image_quality(marked["test"], B["test"])["psnr"],
                                                "bit_acc": ss.bit_accuracy(marked["test"])})
        add(method, "unet", "traditional", {"bit_acc": ss.bit_accuracy(ip.deliver(ip.apply(net, test.a)))},
            attack="surrogate", strength="l2")
        add(method, "clean_output", "control", {"bit_acc": ss.bit_accuracy(B["test"])})
    lap("spread spectrum")

    # a classical service: H and R (unchanged) on the outputs of a TV denoiser they never saw
    tv_a = {name: ip.add_noise(p.clean, c.tv_noise, seed=s + j) for j, (name, p) in enumerate((("att", att), ("test", test)))}
    tv_b = {name: ip.deliver(ip.tv_denoise(x, c.tv_weight)) for name, x in tv_a.items()}
    tv_bw = {name: wmk.embed(b) for name, b in tv_b.items()}
    tv_net, _ = ip.train_surrogate(c, "unet", "l2", tv_a["att"], tv_bw["att"], seed=s + 300)
    add("none", "tv_chambolle", "tv_task", {"psnr": ip.image_quality(tv_a["test"], test.clean)["psnr"]}, case="noisy")
    add("none", "tv_chambolle", "tv_task", {"psnr": ip.image_quality(tv_b["test"], test.clean)["psnr"]}, case="denoised")
    add("deep", "tv_chambolle", "classical", {**ip.verify(wmk, tv_bw["test"], c.tau).metrics(),
                                              **ip.image_quality(tv_bw["test"], tv_b["test"])})
    add("none", "tv_chambolle", "control", ip.verify(wmk, tv_b["test"], c.tau).metrics())
    add("deep", "unet", "classical", ip.verify(wmk, ip.deliver(ip.apply(tv_net, tv_a["test"])), c.tau).metrics(),
        attack="surrogate", strength="l2")
    lap("TV service")

    if example:
        _example_figures(wmk, r_stage1, test, B, BW, inv, extractions, c.tau)
    return lap.seconds


def _example_figures(wmk, r_stage1, test, B, BW, inv, extractions, tau) -> None:
    """The figures that need the networks: example test patches, and the per-image centred NC."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    def show(ax, img, title):
        img = img.detach().float().cpu().clamp(0, 1)
        ax.imshow(img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set(xticks=[], yticks=[])
        ax.set_title(title, fontsize=8)

    k = 6
    fig, axes = plt.subplots(7, k, figsize=(1.45 * k, 1.5 * 7))
    diff = ((BW["test"][:k] - B["test"][:k]).abs() * 50).clamp(0, 1)
    rows = [("A", test.a[:k]), ("B", B["test"][:k]), ("B′", BW["test"][:k]), ("|B′ − B| × 50", diff),
            ("δ", wmk.delta.expand(k, -1, -1, -1)), ("R(B′)", r_stage1.extract(BW["test"][:k])),
            ("R(A)", r_stage1.extract(test.a[:k]))]
    for i, (name, imgs) in enumerate(rows):
        for j in range(k):
            show(axes[i, j], imgs[j], name if j == 0 else "")
    fig.suptitle(f"Stage-1 H and R on test patches (PSNR(B′, B) = {inv['psnr']:.1f} dB)", fontsize=10)
    fig.tight_layout()
    plots.save(fig, EXAMPLE_FIGURES[0])
    plt.close(fig)

    dist = pd.DataFrame([{"images": name, "centred NC": v} for name, e in extractions.items() for v in e.nc])
    fig, ax = plt.subplots(figsize=(8, 3.4))
    sns.stripplot(data=dist, y="images", x="centred NC", alpha=0.35, size=3, jitter=0.25, ax=ax)
    ax.axvline(tau, color="red", ls="--", lw=1, label=f"τ = {tau:g}")
    ax.set(xlim=(-1.02, 1.02), ylabel="", title="Centred NC of R's output (after stage 2) with δ, per test image")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, EXAMPLE_FIGURES[1])
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The chapter's tables, from the results table (one row per seed and setting)
# ---------------------------------------------------------------------------------------------

_NAMES = {"success_rate": "SR", "success_rate_amp": "SR amp", "nc": "NC", "nc_raw": "NC raw", "bit_acc": "bit acc"}


def tau_fpr(curve: pd.DataFrame, n: int, tau: float) -> pd.DataFrame:
    """The per-image false-positive rate of the success rule at TAU on every unmarked population of
    the success-over-τ CURVE (`tables(...).curve`: images without the logo, N images a seed): how
    many of them reach centred NC ≥ TAU, over all seeds, with the Clopper–Pearson 95 % upper bound,
    and the pooled row."""
    from wm.metrics import fpr_upper
    c = curve[(curve.rule == "centred NC ≥ τ") & ~curve.images.str.contains("B′") & ((curve.tau - tau).abs() < 1e-9)]
    if c.empty:
        raise ValueError(f"tau={tau}: not on the curve's grid, or no unmarked images in it")
    rows = []
    for images, part in [*c.groupby("images", sort=False), ("pooled", c)]:
        k, total = int(round((part["success rate"] * n).sum())), n * len(part)
        rows.append({"images": images, "false positives": k, "images scored": total, "FPR": k / total,
                     "FPR upper (95 %)": fpr_upper(k, total)})
    return pd.DataFrame(rows).set_index("images")


def tau_at_fpr(curve: pd.DataFrame, n: int, level: float) -> float | None:
    """The smallest τ of the curve's grid whose pooled per-image FPR (`tau_fpr`) is at most LEVEL;
    None where none is."""
    for tau in sorted(curve.tau.unique()):
        if tau_fpr(curve, n, tau).loc["pooled", "FPR"] <= level:
            return float(tau)
    return None


def _wide(frame: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """EXPERIMENT's rows, one per measurement and one column per metric (wm.report.by_metric)."""
    return by_metric(frame, experiment, ("method", "model", "attack", "strength", "case", "seed"), _NAMES)


def tables(frame: pd.DataFrame) -> SimpleNamespace:
    """The chapter's tables from FRAME (a results frame: this run's rows or a sweep's merged ones)."""
    frame = frame.assign(seed=frame.seed.astype(int))
    task = _wide(frame, "task").assign(images=lambda t: t.model.map({"rainy_input": "rainy inputs A",
                                                                    "unet": "M's outputs B"}))
    stage1 = _wide(frame, "stage1").rename(columns={"case": "images"})
    after = _wide(frame, "surrogate")
    before = _wide(frame, "surrogate_stage1")[["model", "strength", "seed", "NC", "SR", "SR amp"]]
    sur = after.rename(columns={"model": "surrogate", "strength": "loss", "psnr": "PSNR vs B′", "NC": "NC after",
                                "SR": "SR after", "SR amp": "SR amp after"}).merge(
        before.rename(columns={"model": "surrogate", "strength": "loss", "NC": "NC before", "SR": "SR before",
                               "SR amp": "SR amp before"}), on=["surrogate", "loss", "seed"])
    sur = sur[["surrogate", "loss", "seed", "PSNR vs B′", "NC before", "SR before", "NC after", "SR after",
               "SR amp after"]]
    inv = _wide(frame, "invisibility")
    ctl = pd.concat([inv, _wide(frame, "control"), _wide(frame, "marked_surrogate")])
    ctl = ctl[ctl.case != ""].rename(columns={"case": "images"})  # the spread-spectrum and TV controls have no case
    curve = frame[frame.experiment == "tau_curve"]
    curve = curve.assign(images=curve.case.str.split("|").str[0], tau=curve.case.str.split("|").str[1].astype(float),
                         rule=curve.metric.map({"success_rate": "centred NC ≥ τ",
                                                "success_rate_amp": f"and gain ≥ {ip.MIN_GAIN:g}"}))
    curve = curve[["images", "tau", "rule", "seed", "value"]].rename(columns={"value": "success rate"})
    ss = _wide(frame, "traditional")
    ss_ctl = _wide(frame, "control")
    ss_ctl = ss_ctl[ss_ctl.method.str.startswith("spread_spectrum")]
    marked = ss[ss.model == "additive"].set_index(["method", "seed"])
    ss = pd.DataFrame({"PSNR": marked.psnr, "bit acc, marked outputs": marked["bit acc"],
                       "bit acc, surrogate": ss[ss.model == "unet"].set_index(["method", "seed"])["bit acc"],
                       "bit acc, clean outputs": ss_ctl.set_index(["method", "seed"])["bit acc"]}).reset_index()
    ss["bits"] = ss.method.str.extract(r"L=(\d+)")[0].astype(int)
    tv = pd.concat([_wide(frame, "classical"), _wide(frame, "control").query("model == 'tv_chambolle'")])
    tv["images"] = [("surrogate of the watermarked TV service" if a == "surrogate" else
                     "TV outputs, watermarked" if m == "deep" else "TV outputs, clean (control)")
                    for m, a in zip(tv.method, tv.attack)]
    tv_task = _wide(frame, "tv_task").rename(columns={"case": "images"})
    return SimpleNamespace(task=task, stage1=stage1, sur=sur, ctl=ctl, curve=curve, ss=ss.drop(columns="method"),
                           tv=tv, tv_task=tv_task)
