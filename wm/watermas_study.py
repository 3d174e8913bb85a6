"""The WaterMAS chapter, one seed at a time, and its tables read back from the results.

A seed s repeats the whole chapter: its own draw of the data (training, validation and test
images), every method's model and key trained with seed s, and every attack on them. `run_seed`
trains, attacks and measures, recording each number in a results table; the chapter builds every
table, figure and verdict from that table (`tables`), so that one run over three seeds and a sweep
of three one-seed runs (`python -m wm sweep watermas --grid seed=0,1,2 -p seeds 1`, shown with
`merged`) give the same chapter, at the same CPU thread count.

The sharpness budget (the cap on S_K) is measured on a validation split: `n_val` further training
images of the seed's draw, disjoint from the `n_train` the models learn from and from the test
images every reported number uses.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pandas as pd

from wm import attacks, data
from wm import watermas as wmas
from wm.metrics import segmentation_scores
from wm.progress import Laps
from wm.report import by_metric, record
from wm.train import evaluate

KEYED = ("freeze_only", "watermas", "tart")
"""The substitutive methods, read by a Key."""
MARKED = KEYED + ("uchida",)
PAYLOAD_ATTACKS = (("noise", 0.2), ("prune", 0.5), ("quantize", 3))
"""One mid-strength attack of each kind (strengths read off the robustness grid)."""
BUDGET_PRUNE = (0.5, 0.7)
"""Per-layer pruning of the sharpness-budget models."""
VALIDATION = "validation"
"""The `case` of rows measured on the validation split."""
RANDOM = "random directions"
"""The `case` of the sharpness averaged over random directions."""
CONTROLS = {"none": "right key, clean model", "uchida": "Uchida key, clean model"}
"""Control rows by method; the keyed methods' control is a wrong key on the watermarked model."""


def bit_error(model, method: str, key) -> float:
    return wmas.uchida_ber(model, key) if method == "uchida" else wmas.ber(model, key)


def payload_attack(model, attack: str, strength, seed: int):
    return {"noise": lambda: attacks.weight_noise(model, strength, seed=seed),
            "prune": lambda: attacks.prune(model, strength, scope="layer"),
            "quantize": lambda: attacks.quantize(model, strength)}[attack]()


def run_seed(cfg: wmas.Config, s: int, results, device, seg_root=None) -> dict[str, float]:
    """Every experiment of the chapter for seed S, recorded in RESULTS (a wm.results.Results).
    SEG_ROOT: a segmentation data set (wm.data.segmentation_root), or None to skip that experiment.
    Returns the seconds of each experiment (kept out of the table)."""
    ds = data.load_classification("fashion_mnist", n_train=cfg.n_train + cfg.n_val, n_test=cfg.n_test, seed=s,
                                  device=device)
    x, y = ds.x_train[:cfg.n_train], ds.y_train[:cfg.n_train]
    x_val, y_val = ds.x_train[cfg.n_train:], ds.y_train[cfg.n_train:]
    xt, yt = ds.x_test, ds.y_test
    lap = Laps()

    def add(method, model, experiment, metrics, **kw):
        record(results, method, model, experiment, metrics, seed=s, **kw)

    def sharp(model, key, xs, ys):
        return wmas.sharpness(model, key, xs[:cfg.sharpness_samples], ys[:cfg.sharpness_samples], rho=cfg.rho,
                              n_random=cfg.sharpness_random, seed=s)

    # 1. fidelity and the sharpness created, every method on every architecture
    trained = {}
    for model_name in cfg.models:
        n_test = cfg.budget(model_name)[2]
        for method in wmas.METHODS:
            model, key, _ = wmas.train(cfg, method, x, y, seed=s, model_name=model_name)
            trained[model_name, method] = (model, key)
            metrics = {"test_acc": evaluate(model, xt[:n_test], yt[:n_test]), "ber": bit_error(model, method, key)}
            if method != "uchida":
                sh = sharp(model, key, xt[:n_test], yt[:n_test])
                add(method, model_name, "fidelity", {"sharpness": sh["random"]}, case=RANDOM)
                metrics["sharpness"] = sh["sam"]
            add(method, model_name, "fidelity", metrics)
    lap("fidelity")

    # the sharpness budget, on the validation split: the cap is chosen there, never on test images
    clean = trained["smallcnn", "none"][0]
    add("none", "smallcnn", "sharpness_budget", {"test_acc": evaluate(clean, x_val, y_val)}, case=VALIDATION)
    for cap in sorted(set(cfg.sweep_caps) | {cfg.max_sharpness}):
        if cap == cfg.max_sharpness:
            model, key = trained["smallcnn", "watermas"]
        else:
            model, key, _ = wmas.train(dataclasses.replace(cfg, max_sharpness=cap), "watermas", x, y, seed=s)
        method = f"watermas(cap={cap:g})"
        add(method, "smallcnn", "sharpness_budget", {"test_acc": evaluate(model, x_val, y_val), "ber": wmas.ber(model, key),
                                                     "sharpness": sharp(model, key, x_val, y_val)["sam"]}, case=VALIDATION)
        for a in BUDGET_PRUNE:
            pruned = attacks.prune(model, a, scope="layer")
            add(method, "smallcnn", "sharpness_budget", {"test_acc": evaluate(pruned, x_val, y_val),
                                                         "ber": wmas.ber(pruned, key)},
                attack="prune", strength=a, case=VALIDATION)
    lap("sharpness budget")

    # 2. robustness: the attack grids on every small-CNN model, the clean one included
    for method in MARKED + ("none",):
        model, key = trained["smallcnn", method]

        def attacked(attack, strength, m):
            add(method, "smallcnn", "robustness", {"test_acc": evaluate(m, xt, yt), "ber": bit_error(m, method, key)},
                attack=attack, strength=strength)

        for k in cfg.noise_k:
            attacked("noise", k, attacks.weight_noise(model, k, seed=s))
        for a in cfg.prune_amounts:
            attacked("prune", a, attacks.prune(model, a, scope="layer"))
        for b in cfg.quant_bits:
            attacked("quantize", b, attacks.quantize(model, b))
        for ep in cfg.finetune_epochs:
            for lr in cfg.finetune_lrs:
                attacked("finetune", f"lr={lr:g},epochs={ep:g}",
                         attacks.finetune(model, x, y, epochs=ep, lr=lr, fraction=cfg.finetune_fraction, seed=s,
                                          momentum=0.9, weight_decay=5e-4, batch_size=cfg.batch_size))
    lap("robustness")

    # 3. payload: WaterMAS and freeze-only with more or fewer bits, one attack of each kind
    for bits in cfg.payloads:
        for method in ("freeze_only", "watermas"):
            model, key, _ = wmas.train(cfg, method, x, y, seed=s, n_bits=bits)
            add(method, "smallcnn", f"payload_{bits}", {"test_acc": evaluate(model, xt, yt), "ber": wmas.ber(model, key),
                                                        "sharpness": sharp(model, key, xt, yt)["sam"]})
            for attack, strength in PAYLOAD_ATTACKS:
                m = payload_attack(model, attack, strength, s)
                add(method, "smallcnn", f"payload_{bits}", {"test_acc": evaluate(m, xt, yt), "ber": wmas.ber(m, key)},
                    attack=attack, strength=strength)
    lap("payload")

    # 4. security: the key is intercepted and the keyed weights overwritten
    for method in KEYED:
        model, key = trained["smallcnn", method]
        for mode in wmas.OVERWRITE_MODES:
            m = wmas.overwrite(model, key, mode, seed=s)
            add(method, "smallcnn", "security", {"test_acc": evaluate(m, xt, yt), "ber": wmas.ber(m, key)},
                attack="overwrite", strength=mode)

    # 5. controls: a key read from a model it was not written into
    clean, clean_key = trained["smallcnn", "none"]
    add("none", "smallcnn", "control", {"ber": wmas.ber(clean, clean_key)}, case=CONTROLS["none"])
    for method in KEYED:
        model, _ = trained["smallcnn", method]
        wrong = wmas.draw_key(wmas.build_model("smallcnn", cfg), cfg.n_bits, seed=s + 1000, kappa=cfg.kappa)
        add(method, "smallcnn", "control", {"ber": wmas.ber(model, wrong)}, case="wrong key, watermarked model")
    add("uchida", "smallcnn", "control", {"ber": wmas.uchida_ber(clean, trained["smallcnn", "uchida"][1])},
        case=CONTROLS["uchida"])
    lap("security and controls")

    # 6. segmentation, where a data set is present
    if seg_root is not None:
        seg = data.load_segmentation(seg_root, size=cfg.seg_size, limit=cfg.seg_n_train, device=device)
        for method in ("none", "watermas"):
            model, key, _ = wmas.train_segmentation(cfg, method, seg, seed=s)
            acc, miou = segmentation_scores(model, seg.x_val, seg.y_val, seg.num_classes)
            add(method, "deeplabv3", "segmentation", {"test_acc": acc, "ber": wmas.ber(model, key)})
        lap("segmentation")
    return lap.seconds


# ---------------------------------------------------------------------------------------------
# The chapter's tables, from the results table (one row per seed and setting)
# ---------------------------------------------------------------------------------------------

_NAMES = {"test_acc": "test acc", "ber": "BER"}


def _wide(frame: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """EXPERIMENT's rows, one per measurement and one column per metric (wm.report.by_metric)."""
    return by_metric(frame, experiment, ("method", "model", "attack", "strength", "case", "seed"), _NAMES)


def _number(strength: pd.Series) -> pd.Series:
    """Strengths as numbers (NaN where blank or a text such as "lr=0.01,epochs=1")."""
    return pd.to_numeric(strength.astype(str), errors="coerce")


def chosen_cap(caps: pd.DataFrame, budget_points: float = 1.0) -> float | None:
    """The cap the validation split chooses: the largest whose mean validation cost over seeds is
    at most BUDGET_POINTS (the imperceptibility criterion); None when no cap fits."""
    fits = caps.groupby("cap")["cost (points)"].mean()
    fits = fits[fits <= budget_points]
    return float(fits.index.max()) if len(fits) else None


def tables(frame: pd.DataFrame, cfg: wmas.Config) -> SimpleNamespace:
    """The chapter's tables from FRAME (a results frame: this run's rows or a sweep's merged ones)."""
    frame = frame.assign(seed=frame.seed.astype(int))
    f = _wide(frame, "fidelity")
    fid = f[f.case == ""].drop(columns=["case", "attack", "strength"])
    rnd = f[f.case == RANDOM][["method", "model", "seed", "sharpness"]].rename(columns={"sharpness": "sharpness (random)"})
    fid = fid.rename(columns={"sharpness": "sharpness (SAM dir.)"}).merge(rnd, on=["method", "model", "seed"], how="left")
    clean = fid[fid.method == "none"].set_index(["model", "seed"])["test acc"]
    fid["cost (points)"] = 100 * (clean.reindex(pd.MultiIndex.from_frame(fid[["model", "seed"]])).values - fid["test acc"])

    b = _wide(frame, "sharpness_budget")
    clean_val = b[b.method == "none"].set_index("seed")["test acc"]
    b = b[b.method != "none"].assign(cap=lambda t: t.method.str.extract(r"cap=(.+)\)")[0].astype(float))
    caps = b[b.attack == "none"][["cap", "seed", "test acc", "BER", "sharpness"]].rename(columns={"test acc": "val acc"})
    for a in BUDGET_PRUNE:
        p = b[(b.attack == "prune") & (_number(b.strength) == a)][["cap", "seed", "test acc", "BER"]]
        caps = caps.merge(p.rename(columns={"test acc": f"val acc prune {a}", "BER": f"BER prune {a}"}), on=["cap", "seed"])
    caps["cost (points)"] = 100 * (caps.seed.map(clean_val) - caps["val acc"])

    rob = _wide(frame, "robustness").drop(columns=["case", "model"])
    pay = []
    for exp in sorted({e for e in frame.experiment.unique() if e.startswith("payload_")}, key=lambda e: int(e[8:])):
        w = _wide(frame, exp)
        row = w[w.attack == "none"][["method", "seed", "test acc", "BER", "sharpness"]].assign(bits=int(exp[8:]))
        for attack, strength in PAYLOAD_ATTACKS:
            a = w[(w.attack == attack) & (_number(w.strength) == strength)][["method", "seed", "test acc", "BER"]]
            row = row.merge(a.rename(columns={"test acc": f"acc {attack} {strength:g}", "BER": f"BER {attack} {strength:g}"}),
                            on=["method", "seed"])
        pay.append(row)
    pay = pd.concat(pay, ignore_index=True)
    small_clean = clean.xs("smallcnn", level="model")
    pay["cost (points)"] = 100 * (pay.seed.map(small_clean) - pay["test acc"])

    sec = _wide(frame, "security").rename(columns={"strength": "overwrite"})
    own = fid[fid.model == "smallcnn"].set_index(["method", "seed"])["test acc"]
    sec["accuracy lost (points)"] = 100 * (own.reindex(pd.MultiIndex.from_frame(sec[["method", "seed"]])).values
                                           - sec["test acc"])
    ctl = _wide(frame, "control").rename(columns={"case": "control"})
    seg = _wide(frame, "segmentation") if (frame.experiment == "segmentation").any() else pd.DataFrame()
    return SimpleNamespace(fid=fid, caps=caps, rob=rob, pay=pay, sec=sec, ctl=ctl, seg=seg)
