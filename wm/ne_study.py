"""The null-embedding chapter, one seed at a time, and its tables read back from the results.

A seed s repeats the whole chapter: its own draw of the data, party s's signature and models (a
watermarked one and a clean twin, both trained with seed s), party s+1 as the pirate, and every
attack on party s's model. `run_seed` trains, attacks and verifies, recording each number in a
results table; the chapter builds every table, figure and verdict from that table (`tables`).
One run over three seeds and a sweep of three one-seed runs (`python -m wm sweep null_embedding
--grid seed=0,1,2 -p seeds 1`, shown with `merged`) therefore give the same chapter, at the same CPU
thread count (threads change float rounding).
"""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import torch

from wm import attacks, data
from wm import null_embedding as ne
from wm.progress import Laps
from wm.report import by_metric, record
from wm.train import evaluate

METHOD = "null_embedding"
BN_VARIANTS = (("null_embedding", "BatchNorm, frozen for stamped passes", dict(bn="frozen")),
               ("null_embedding(bn=shared)", "BatchNorm shared by all streams", dict(bn="shared")),
               ("null_embedding(norm=none)", "no normalisation layers", dict(norm="none")))
"""The BatchNorm measurement: the table's method name, the chapter's label, train_model's options."""
FP_CONTROLS = ("clean model, owner's or pirate's signature", "watermarked model, the pirate's signature",
               "random signature vs owner's model", "owner's signature, one byte altered",
               "forger's signature under owner's key and verifier", "owner's own signature (positive control)")
"""The false-positive checks of each seed (the last one must be accepted)."""


def wm_metrics(v: ne.Verification) -> dict[str, float]:
    return {"wm_acc_null": v.acc_null, "wm_acc_true": v.acc_true, "verified": float(v.verified)}


def split(x: torch.Tensor, y: torch.Tensor, classes, limit: int):
    """The images of CLASSES (at most LIMIT), relabelled 0..len(CLASSES)-1."""
    keep = torch.isin(y, torch.tensor(classes, device=y.device))
    x, y = x[keep][:limit], y[keep][:limit]
    return x, torch.searchsorted(torch.tensor(classes, device=y.device), y)


def run_seed(cfg: ne.Config, s: int, results, device) -> dict[str, float]:
    """Every experiment of the chapter for seed S, recorded in RESULTS (a wm.results.Results).
    Returns the seconds of each experiment (kept out of the table: same-seed runs must give
    identical tables)."""
    ds = data.load_classification("fashion_mnist", n_train=cfg.n_train, n_test=cfg.n_test, seed=s, device=device)
    x_ver, y_ver = ds.x_test[:cfg.n_verify], ds.y_test[:cfg.n_verify]

    def check(model, sig, full=False, **kw):
        """The owner's verification on the first n_verify test images (FULL: the whole test set)."""
        x, y = (ds.x_test, ds.y_test) if full else (x_ver, y_ver)
        return ne.verify(model, sig, x, y, kw.get("n", cfg.n), kw.get("lam", cfg.lam), 10, cfg.threshold)

    def add(method, model, experiment, metrics, **kw):
        record(results, method, model, experiment, metrics, seed=s, **kw)

    def acc(model):
        return evaluate(model, ds.x_test, ds.y_test)

    sig, pirate_sig = cfg.party(s).sign(cfg.timestamp), cfg.party(s + 1).sign(cfg.timestamp)
    own, pirate_wm = cfg.watermark(sig), cfg.watermark(pirate_sig)
    lap = Laps()

    # 1. fidelity: a clean and a watermarked model, the same recipe and seed
    clean, h_clean = ne.train_model(cfg, ds.x_train, ds.y_train, seed=s)
    marked, h_marked = ne.train_model(cfg, ds.x_train, ds.y_train, seed=s, wm=own)
    add("none", cfg.model, "fidelity", {"test_acc": acc(clean)})
    add(METHOD, cfg.model, "fidelity", {"test_acc": acc(marked), **wm_metrics(check(marked, sig, full=True))})
    lap.seconds["clean training"], lap.seconds["watermarked training"] = h_clean.seconds, h_marked.seconds
    lap("fidelity")

    # why BatchNorm is frozen for the stamped passes: three variants at the sweep's scale
    xs, ys = ds.x_train[:cfg.sweep_n_train], ds.y_train[:cfg.sweep_n_train]
    for method, _, kw in BN_VARIANTS:
        m, _ = ne.train_model(cfg, xs, ys, seed=s, wm=own, epochs=cfg.sweep_epochs, small=True, **kw)
        add(method, "smallcnn", "bn_choice", {"test_acc": acc(m), **wm_metrics(check(m, sig))})
    lap("BatchNorm choice")

    # 2. false positives: every check that must fail, and the owner's own claim
    def fp(control, model, claim, i=0):
        add(METHOD, cfg.model, "false_positive", wm_metrics(check(model, claim)), case=f"{control}|{i}")

    fp(FP_CONTROLS[0], clean, sig, 0)
    fp(FP_CONTROLS[0], clean, pirate_sig, 1)
    fp(FP_CONTROLS[1], marked, pirate_sig)
    for i in range(cfg.n_random_signatures):
        claimant = ne.Owner.from_seed(f"claimant-{i}", s)  # a fresh key and verifier string each
        fp(FP_CONTROLS[2], marked, claimant.sign(f"claim-{i}"), i)
    altered = bytearray(sig.signature)
    altered[0] ^= 1
    fp(FP_CONTROLS[3], marked, ne.Signature(sig.verifier, bytes(altered), sig.public_key))
    forger = ne.Owner.from_seed("forger", s).sign(cfg.timestamp)
    fp(FP_CONTROLS[4], marked, ne.Signature(sig.verifier, forger.signature, sig.public_key))
    fp(FP_CONTROLS[5], marked, sig)
    lap("false positives")

    # 3. piracy: party s+1 embeds its own watermark into party s's model (and into the clean twin)
    for method, start in ((METHOD, marked), ("none", clean)):
        for ep in cfg.pirate_epochs:
            for lr in cfg.pirate_lrs:
                p = ne.pirate(start, pirate_wm, ds.x_train, ds.y_train, cfg.pirate_fraction, ep, lr, seed=s,
                              w_null=cfg.w_null, w_true=cfg.w_true, batch_size=cfg.batch_size, grad_clip=cfg.grad_clip)
                strength = f"lr={lr:g},epochs={ep:g}"
                owner = wm_metrics(check(p, sig)) if method == METHOD else {}
                add(method, cfg.model, "piracy", {"test_acc": acc(p), **owner}, attack="piracy", strength=strength)
                add(method, cfg.model, "piracy_claim", wm_metrics(check(p, pirate_sig)), attack="piracy",
                    strength=strength)
    lap("piracy")

    # 4. removal attacks on party s's model
    def attacked(attack, strength, m):
        add(METHOD, cfg.model, "robustness", {"test_acc": acc(m), **wm_metrics(check(m, sig))}, attack=attack,
            strength=strength)

    kw = dict(fraction=cfg.pirate_fraction, seed=s, batch_size=cfg.batch_size)
    for lr in ne.FINETUNE_LRS:
        attacked("finetune", lr, attacks.finetune(marked, ds.x_train, ds.y_train, epochs=cfg.attack_epochs, lr=lr, **kw))
    for amount in ne.PRUNE_AMOUNTS:
        attacked("prune", amount, attacks.prune(marked, amount))
    for bits in ne.QUANT_BITS:
        attacked("quantize", bits, attacks.quantize(marked, bits))
    for k in ne.NOISE_K:
        attacked("noise", k, attacks.weight_noise(marked, k, seed=s))
    n_att = max(1, round(cfg.pirate_fraction * len(ds.x_train)))
    student = attacks.distill(marked, ne.build_model(cfg).to(device), ds.x_train[:n_att], epochs=2 * cfg.attack_epochs,
                              lr=cfg.lr, seed=s, batch_size=cfg.batch_size)
    attacked("distill", 2 * cfg.attack_epochs, student)
    lap("removal")

    # transfer to the five classes the owner's second model never saw
    xa, ya = split(ds.x_train, ds.y_train, ne.OWNER_CLASSES, cfg.sweep_n_train)
    xa_test, ya_test = split(ds.x_test, ds.y_test, ne.OWNER_CLASSES, len(ds.x_test))
    xb, yb = split(ds.x_train, ds.y_train, ne.TRANSFER_CLASSES, n_att)
    xb_test, yb_test = split(ds.x_test, ds.y_test, ne.TRANSFER_CLASSES, len(ds.x_test))
    wm5 = cfg.watermark(sig, num_classes=5)
    for method, wm_split in ((METHOD, wm5), ("none", None)):
        src, _ = ne.train_model(cfg, xa, ya, seed=s, wm=wm_split, num_classes=5, epochs=cfg.sweep_epochs, small=True)
        v = ne.verify(src, sig, xa_test, ya_test, cfg.n, cfg.lam, 5, cfg.threshold)
        add(method, "smallcnn", "transfer_source", {"test_acc": evaluate(src, xa_test, ya_test), **wm_metrics(v)})
        for mode, freeze in (("head", True), ("all", False)):
            t5 = attacks.transfer(src, xb, yb, num_classes=5, epochs=2 * cfg.attack_epochs, lr=0.01,
                                  freeze_features=freeze, seed=s, batch_size=cfg.batch_size)
            an, at, _ = ne.transferred_accuracies(t5, wm5, xb_test, yb_test)
            add(method, "smallcnn", "transfer", {"test_acc": evaluate(t5, xb_test, yb_test), "wm_acc_null": an,
                                                  "wm_acc_true": at, "verified": float(min(an, at) >= cfg.threshold)},
                attack="transfer", strength=mode)
    lap("transfer")

    # 5. λ and n: one model per point at the sweep's scale, then the pirate at one setting
    sweep_clean, _ = ne.train_model(cfg, xs, ys, seed=s, epochs=cfg.sweep_epochs, small=True)
    add("none", "smallcnn", "sweep", {"test_acc": acc(sweep_clean)})
    piracy = f"lr={ne.SWEEP_PIRATE_LR:g},epochs={max(cfg.pirate_epochs):g}"
    for lam, n in sweep_points(cfg):
        w_owner, w_pirate = cfg.watermark(sig, n=n, lam=lam), cfg.watermark(pirate_sig, n=n, lam=lam)
        m, _ = ne.train_model(cfg, xs, ys, seed=s, wm=w_owner, epochs=cfg.sweep_epochs, small=True)
        p = ne.pirate(m, w_pirate, ds.x_train, ds.y_train, cfg.pirate_fraction, max(cfg.pirate_epochs),
                      ne.SWEEP_PIRATE_LR, seed=s, w_null=cfg.w_null, w_true=cfg.w_true, batch_size=cfg.batch_size,
                      grad_clip=cfg.grad_clip)
        method = f"null_embedding(lam={lam:g},n={n})"
        add(method, "smallcnn", "sweep", {"test_acc": acc(m), **wm_metrics(check(m, sig, n=n, lam=lam))})
        add(method, "smallcnn", "sweep", {"test_acc": acc(p), **wm_metrics(check(p, sig, n=n, lam=lam))},
            attack="piracy", strength=piracy)
        add(method, "smallcnn", "sweep_piracy_claim", wm_metrics(check(p, pirate_sig, n=n, lam=lam)),
            attack="piracy", strength=piracy)
    lap("λ and n")
    return lap.seconds


def sweep_points(cfg: ne.Config) -> list[tuple[float, int]]:
    """(λ, n) of experiment 5: the default, the other λ at the default n, the other n at the default λ."""
    return [(cfg.lam, cfg.n)] + [(lam, cfg.n) for lam in cfg.sweep_lams] + [(cfg.lam, n) for n in cfg.sweep_ns]


# ---------------------------------------------------------------------------------------------
# The chapter's tables, from the results table (one row per seed and setting)
# ---------------------------------------------------------------------------------------------

_NAMES = {"test_acc": "test acc", "wm_acc_null": "acc_null", "wm_acc_true": "acc_true"}


def _wide(frame: pd.DataFrame, experiment: str, by=("method", "attack", "strength", "case", "seed")) -> pd.DataFrame:
    """EXPERIMENT's rows, one per measurement and one column per metric (`verified` as a bool)."""
    w = by_metric(frame, experiment, by, _NAMES)
    if "verified" in w:
        w["verified"] = w.verified == 1
    return w


def _settings(strength: pd.Series) -> pd.DataFrame:
    """"lr=0.01,epochs=3" → columns lr, epochs."""
    parsed = strength.astype(str).str.extract(r"lr=([^,]+),epochs=(.+)").astype(float)
    return parsed.set_axis(["lr", "epochs"], axis=1)


def tables(frame: pd.DataFrame, cfg: ne.Config) -> SimpleNamespace:
    """The chapter's tables from FRAME (a results frame: this run's rows or a sweep's merged ones)."""
    frame = frame.assign(seed=frame.seed.astype(int))
    f = _wide(frame, "fidelity")
    marked = f[f.method == METHOD].set_index("seed")
    fid = pd.DataFrame({"clean acc": f[f.method == "none"].set_index("seed")["test acc"], "marked acc": marked["test acc"],
                        "acc_null": marked.acc_null, "acc_true": marked.acc_true, "verified": marked.verified})
    labels = {method: label for method, label, _ in BN_VARIANTS}
    bn = _wide(frame, "bn_choice").assign(variant=lambda t: t.method.map(labels))
    fp = _wide(frame, "false_positive")
    fp["control"] = fp.case.str.split("|").str[0]
    fp["signature valid"] = fp.acc_null.notna()
    fp = fp.rename(columns={"verified": "accepted"}).sort_values(
        ["control", "seed"], key=lambda c: c.map(FP_CONTROLS.index) if c.name == "control" else c, kind="stable")
    claim = _wide(frame, "piracy_claim")
    pir = claim[["method", "strength", "seed"]].join(_settings(claim.strength))
    pir["start"] = pir.method.map({METHOD: "watermarked", "none": "clean"})
    pir = pir.assign(**{"pirate acc_null′": claim.acc_null, "pirate acc_true′": claim.acc_true,
                        "pirate verified": claim.verified})
    owner = _wide(frame, "piracy").rename(columns={"acc_null": "owner acc_null", "acc_true": "owner acc_true",
                                                   "verified": "owner verified"})
    pir = pir.merge(owner[["method", "strength", "seed", "test acc", "owner acc_null", "owner acc_true",
                           "owner verified"]], on=["method", "strength", "seed"])
    rem = _wide(frame, "robustness")
    rem["strength"] = rem.strength.astype(float)
    tl = pd.concat([_wide(frame, "transfer_source").assign(transfer="before (original task)"),
                    _wide(frame, "transfer").assign(transfer=lambda t: t.strength.map({"head": "new head only", "all": "all layers"}))])
    tl["source"] = tl.method.map({METHOD: "watermarked", "none": "clean"})
    order = {"before (original task)": 0, "new head only": 1, "all layers": 2}
    tl = tl.rename(columns={"test acc": "task acc"}).sort_values(
        ["source", "transfer", "seed"], key=lambda c: c.map(order) if c.name == "transfer" else c,
        ascending=[False, True, True]).reset_index(drop=True)
    return SimpleNamespace(fid=fid, bn=bn, fp=fp, pir=pir, rem=rem, tl=tl, sw=_sweep(frame, cfg))


def _sweep(frame: pd.DataFrame, cfg: ne.Config) -> pd.DataFrame:
    """Experiment 5: one row per (λ, n, seed)."""
    w = _wide(frame, "sweep")
    clean = w[w.method == "none"].set_index("seed")["test acc"]
    w = w[w.method != "none"]
    point = w.method.str.extract(r"lam=([^,]+),n=(\d+)")
    w = w.assign(**{"λ": point[0].astype(float), "n": point[1].astype(int)})
    before, after = w[w.attack == "none"], w[w.attack == "piracy"]
    claim = _wide(frame, "sweep_piracy_claim")
    sw = before[["method", "λ", "n", "seed", "test acc", "acc_null", "acc_true", "verified"]].merge(
        after[["method", "seed", "test acc", "verified"]].rename(columns={"test acc": "pirated acc",
                                                                          "verified": "owner verified after piracy"}),
        on=["method", "seed"]).merge(claim[["method", "seed", "verified"]].rename(columns={"verified": "pirate verified"}),
                                     on=["method", "seed"])
    sw["clean acc"] = sw.seed.map(clean)
    sw["accuracy cost"] = sw["clean acc"] - sw["test acc"]
    overlap = {}
    for s in sw.seed.unique():
        sig, pirate_sig = cfg.party(s).sign(cfg.timestamp), cfg.party(s + 1).sign(cfg.timestamp)
        for lam, n in sweep_points(cfg):
            overlap[s, lam, n] = cfg.watermark(sig, n=n, lam=lam).overlap(cfg.watermark(pirate_sig, n=n, lam=lam))
    sw["overlap (px)"] = [overlap.get((s, lam, n), -1) for s, lam, n in zip(sw.seed, sw["λ"], sw.n)]
    return sw.drop(columns="method").sort_values(["λ", "n", "seed"]).reset_index(drop=True)
