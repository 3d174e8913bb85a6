"""wm.suite: the composite service, the survival rules, the plan from the registries, the Config,
the summary (wm.report), and that no shared code names a method.

The notebook itself runs at the smoke profile in tests/test_notebooks.py (every notebook in
notebooks/ is picked up there).
"""

import ast
import json
import math

import pytest
import torch
from torch import nn

from wm import ROOT, STUDIES, attacks, metrics, report, results, suite
from wm import image_processing as ip
from wm import watermas as wmas
from wm.methods import REGISTRY, Setup
from wm.methods._setups import _suite_defaults, image_config, ne_config, wmas_config
from wm.models import SmallCNN
from wm.results import Results, attacks_vocabulary
from wm.train import seed_everything


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster, and much faster when the cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _service(size=16, seed=0):
    """A small M∘H whose H does something (its zero-initialised last layer made non-zero)."""
    seed_everything(seed)
    m = ip.build_surrogate("unet", 4)
    h = ip.Embedder(width=4)
    with torch.no_grad():
        for net in (m.final, h.net.final):
            net.weight.normal_(0, 0.05)
    delta = ip.watermark_image("logo", size)
    return ip.Service(m, h, delta).eval(), m, h, delta


# --- the composite ----------------------------------------------------------------------------

def test_service_is_h_after_m():
    service, m, h, delta = _service()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        expected = h(m(x).clamp(0, 1), delta)
        got = service(x)
    assert torch.equal(got, expected)
    assert not torch.allclose(got, m(x).clamp(0, 1))  # H really changes the outputs
    assert torch.equal(service.delta, delta) and service.delta is not delta  # δ is the service's own copy


def test_service_weights_are_m_and_h():
    service, m, h, _ = _service()
    n = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert n(service) == n(m) + n(h)
    # the attacks see M's and H's convolutions, not δ
    assert len(attacks.attacked_weights(service)) == len(attacks.attacked_weights(m)) + len(attacks.attacked_weights(h))


def test_prune_at_zero_is_the_identity_on_outputs():
    service, *_ = _service()
    x = torch.rand(4, 3, 16, 16)
    pruned = attacks.prune(service, 0.0)
    with torch.no_grad():
        assert torch.allclose(pruned(x), service(x), atol=1e-6)
    half = attacks.prune(service, 0.5)
    with torch.no_grad():
        assert not torch.allclose(half(x), service(x), atol=1e-4)


def test_white_box_finetune_of_the_service_trains_m_and_h_keeps_delta():
    service, *_ = _service()
    a, clean = torch.rand(32, 3, 16, 16), torch.rand(32, 3, 16, 16)
    before = {k: v.clone() for k, v in service.state_dict().items()}
    tuned = attacks.finetune(service, a, clean, epochs=1, lr=1e-3, fraction=1.0, seed=0, loss="l1", optimizer="adam",
                             weight_decay=0.0, batch_size=16, amp=False)
    after = tuned.state_dict()
    assert torch.equal(after["delta"], before["delta"])
    assert not torch.equal(after["m.final.weight"], before["m.final.weight"])
    assert not torch.equal(after["h.net.final.weight"], before["h.net.final.weight"])
    assert all(torch.equal(v, before[k]) for k, v in service.state_dict().items())  # the input is untouched


# --- the survival rules -------------------------------------------------------------------------

def test_ber_threshold_is_the_binomial_bound():
    for n, fpr in ((256, 1e-6), (64, 1e-6), (128, 1e-3)):
        t = metrics.ber_threshold(n, fpr)
        e = round(t * n)
        tail = lambda k: sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n  # noqa: E731
        assert tail(e) <= fpr < tail(e + 1)
    assert metrics.ber_threshold(256, 1e-6) == 89 / 256 and metrics.ber_threshold(64, 1e-6) == 13 / 64
    assert metrics.ber_threshold(256, 1e-9) < metrics.ber_threshold(256, 1e-6)
    assert metrics.ber_threshold(4, 1e-3) < 0  # 4 bits cannot reach one in a thousand


class _ConstantR(nn.Module):
    """An extractor that answers δ for the first K images of a batch and the blank for the rest."""

    def __init__(self, delta, k):
        super().__init__()
        self.delta, self.k, self.dummy = delta, k, nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.ones(len(x), *self.delta.shape)
        out[:self.k] = self.delta
        return out


def _image_setup(size=16, **budget):
    b = dict(_suite_defaults("image"), profile="smoke", size=size, n_owner=24, n_attacker=24, n_test=10, m_epochs=1,
             stage1_epochs=1, **budget)
    return Setup(0, torch.device("cpu"), b)


@pytest.mark.parametrize("k,verified", [(10, 1.0), (5, 1.0), (4, 0.0), (0, 0.0)])
def test_deep_survival_rule(k, verified):
    delta = ip.watermark_image("logo", 16)
    wmk = ip.DeepWatermark(h=None, r=_ConstantR(delta, k), delta=delta)
    clean = torch.full((10, 3, 16, 16), 0.5)
    setup = _image_setup(sr_threshold=0.5)
    setup.data["test"] = ip.Pairs(a=clean, clean=clean)
    outputs = clean + 0.1  # MSE 0.01 against the ground truth: 20 dB
    deep = REGISTRY["deep"]
    score = deep.detect(outputs, wmk, setup)
    assert score["success_rate"] == pytest.approx(k / 10)
    assert score["verified"] == verified
    assert deep.utility(outputs, setup) == pytest.approx(20.0, abs=1e-4)


def _classifier_setup(x, y, **budget):
    b = dict(_suite_defaults("classifier"), profile="smoke", width=4, epochs=1, batch_size=32, n_bits=32, **budget)
    return Setup(0, torch.device("cpu"), b, dict(x_train=x, y_train=y, x_att=x, y_att=y, x_test=x, y_test=y))


def test_watermas_reembed_writes_the_thiefs_key_and_leaves_the_input():
    seed_everything(0)
    model = SmallCNN(1, 10, width=4)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pirated, key = REGISTRY["watermas"].reembed(model, _classifier_setup(x, y), epochs=1)
    assert wmas.ber(pirated, key) == 0.0  # the sharpness hook holds the thief's keyed weights
    assert key.seed == 1000 and len(key) == 32  # the setup's seed + the piracy offset
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_service_piracy_trains_the_thiefs_own_mark_on_the_thiefs_data_and_leaves_the_service():
    setup = _image_setup()
    service, *_ = _service(size=16)
    a = torch.rand(24, 3, 16, 16)
    setup.data["att"] = ip.Pairs(a=a, clean=a.clone())
    before = {k: v.clone() for k, v in service.state_dict().items()}
    thief = REGISTRY["deep"].thief_mark(service, setup, epochs=1)
    owner_delta = ip.watermark_image("logo", 16)
    assert thief.delta.shape == owner_delta.shape and not torch.equal(thief.delta, owner_delta)  # its own δ′
    assert torch.equal(thief.delta, ip.watermark_image("qr", 16, 1000))
    assert all(torch.equal(v, before[k]) for k, v in service.state_dict().items())
    out = thief.embed(ip.deliver(ip.apply(service, a)))
    assert out.shape == a.shape and 0 <= out.min() and out.max() <= 1


# --- the plan and the Config --------------------------------------------------------------------

def test_every_cell_is_planned_or_explained():
    assert set(suite.ATTACKS) <= set(attacks_vocabulary())
    assert set(suite.METHODS) == set(REGISTRY)
    for name in suite.METHODS:
        m = REGISTRY[name]
        assert set(suite.plan(m)) <= set(suite.ATTACKS)
        for attack in suite.ATTACKS:
            if attack not in suite.plan(m):
                assert suite.reason(m, attack), (name, attack)
        assert set(m.not_applicable) <= set(suite.ATTACKS), name  # no reason for an attack that does not exist


def test_the_plan_comes_from_the_kinds_and_the_methods_own_attacks():
    kinds = {a.name: a.kinds for a in attacks.REGISTRY.values()}
    for name, m in REGISTRY.items():
        expected = [a for a, k in kinds.items() if m.kind in k] + list(m.own_attacks)
        assert suite.plan(m) == [a for a in expected if a not in m.not_applicable], name
    # a new attack of one kind joins the plan of every method of that kind, and no other
    attacks.register("blur_weights", ("classifier-white",), grid=(1,), axis="σ")(lambda model, s, setup, kind: model)
    try:
        for name, m in REGISTRY.items():
            assert ("blur_weights" in suite.plan(m)) == (m.kind == "classifier-white"), name
    finally:
        del attacks.REGISTRY["blur_weights"]


def test_grid_follows_the_plan():
    cfg = suite.Config.from_profile("cpu")
    assert cfg.grid("deep", "prune") == list(cfg.prune_amounts) == cfg.grid("watermas", "prune")
    assert cfg.grid("watermas", "overwrite") == list(wmas.OVERWRITE_MODES) == cfg.grid("tart", "overwrite")
    assert cfg.grid("deep", "overwrite") == list(cfg.overwrite_psnr) == cfg.grid("spread_spectrum", "overwrite")
    assert cfg.grid("deep", "distill") == [] and cfg.grid("null_embedding", "surrogate") == []
    assert cfg.grid("uchida", "overwrite") == [] and cfg.grid("null_embedding", "overwrite") == []
    assert cfg.grid("deep", "piracy") == [cfg.stage1_epochs]  # the thief's stage 1 at the owner's budget
    assert cfg.grid("null_embedding", "piracy") == list(cfg.piracy_epochs)
    only = suite.Config.from_profile("cpu", attacks=("prune",))
    assert only.grid("null_embedding", "finetune") == [] and only.grid("null_embedding", "prune")


def _string_literals(source: str) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


@pytest.mark.parametrize("path", ["wm/suite.py", "wm/report.py", "wm/attacks/__init__.py", "wm/results.py",
                                  "wm/methods/__init__.py", "notebooks/attack_suite.ipynb",
                                  "notebooks/comparison.ipynb"])
def test_no_shared_code_names_a_method(path):
    """Only a method's own file (and its study's module) may name it: the suite, the report, the
    registries and the two chapters that span every method read names from the registry."""
    p = ROOT / path
    if p.suffix == ".ipynb":
        nb = json.loads(p.read_text())
        source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
                           and "parameters" not in c.get("metadata", {}).get("tags", []))
    else:
        source = p.read_text()
    named = _string_literals(source) & set(REGISTRY)
    assert not named, f"{path} names {sorted(named)}"


@pytest.mark.parametrize("method,attack,match", [("nope", "prune", "unknown method"),
                                                 ("deep", "jpeg", "unknown attack")])
def test_unknown_method_or_attack_is_rejected(method, attack, match):
    with pytest.raises(ValueError, match=match):
        suite.Config.from_profile("smoke").grid(method, attack)


@pytest.mark.parametrize("overrides,field", [
    (dict(seeds=0), "seeds"),
    (dict(methods=("null_embedding", "nope")), "methods"),
    (dict(methods=()), "methods"),
    (dict(attacks=("jpeg",)), "attacks"),
    (dict(n_train=58000, n_attacker=5000), "n_attacker"),
    (dict(n_bits=4), "ber_fpr"),
    (dict(size=20), "size"),
    (dict(n_owner=8), "n_owner"),
    (dict(prune_amounts=(0.5, 1.5)), "prune_amounts"),
    (dict(quant_bits=(8, 0)), "quant_bits"),
    (dict(sr_threshold=0.0), "sr_threshold"),
    (dict(finetune_epochs=()), "finetune_epochs"),
    (dict(seed=1.5), "seed"),
    (dict(methods=("spread_spectrum",)), "ss_psnr"),  # None matches the deep mark, which would not run
    (dict(w_basic=0), "w_basic"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}="):
        suite.Config.from_profile("cpu", **overrides)


def test_unknown_parameter_is_rejected():
    with pytest.raises(ValueError, match="unknown parameter"):
        suite.Config.from_profile("cpu", lr=0.1)


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu"])
def test_the_studies_configs_accept_the_common_budget(profile):
    cfg = suite.Config.from_profile(profile)
    x = torch.zeros(cfg.n_train, 1, 28, 28)
    cls = Setup(cfg.seed + 2, torch.device("cpu"), {**cfg.budget("classifier-white"), "profile": profile},
                dict(x_train=x, x_test=x[:cfg.n_test]))
    img = Setup(cfg.seed + 2, torch.device("cpu"), {**cfg.budget("image-service"), "profile": profile})
    n, w, i = ne_config(cls), wmas_config(cls), image_config(img)
    assert (n.model, n.width, n.n_train, n.epochs, n.seed) == ("smallcnn", cfg.width, cfg.n_train, cfg.epochs, cfg.seed + 2)
    assert (w.width, w.n_train, w.epochs, w.n_bits) == (cfg.width, cfg.n_train, cfg.epochs, cfg.n_bits)
    assert (i.size, i.n_owner, i.n_attacker, i.stage1_epochs, i.seed) == (cfg.size, cfg.n_owner, cfg.n_attacker_pairs,
                                                                         cfg.stage1_epochs, cfg.seed + 2)
    assert i.w_basic == cfg.w_basic  # the suite's own weight, not the image chapter's
    assert cfg.seeds == (1 if profile == "smoke" else 3)
    assert cfg.timings == (profile != "smoke")


def test_the_suite_is_a_study_of_the_results_table():
    assert "attack_suite" in STUDIES
    Results("attack_suite", "smoke")


# --- reading the table back -------------------------------------------------------------------

def _table():
    """Two seeds of a made-up null-embedding grid (prune 0.5 kept, 0.9 lost) and its control."""
    cfg = suite.Config.from_profile("smoke", methods=("null_embedding",), attacks=("prune",), prune_amounts=(0.5, 0.9))
    r = Results("attack_suite", "smoke")
    ctl = suite.control_model(REGISTRY["null_embedding"])
    for seed in (0, 1):
        add = lambda method, model, attack, strength, metrics, experiment="suite": report.record(  # noqa: E731
            r, method, model, experiment, metrics, seed=seed, attack=attack, strength=strength)
        add("null_embedding", "smallcnn", "none", None, {"test_acc": 0.90, "score": 0.9, "verified": 1.0})
        add("none", ctl, "none", None, {"test_acc": 0.91, "score": 0.0, "verified": 0.0})
        for strength, acc, score, ok in (("0.5", 0.89, 0.85, 1.0), ("0.9", 0.30 + 0.1 * seed, 0.2, 0.0)):
            add("null_embedding", "smallcnn", "prune", strength, {"test_acc": acc, "score": score, "verified": ok})
            add("none", ctl, "prune", strength, {"test_acc": acc, "score": 0.0, "verified": 0.0})
        add("null_embedding", "smallcnn", "prune", "0.9", {"verified": 1.0}, experiment="suite_thief_claim")  # ignored
    return cfg, r


def test_wide_has_one_row_per_run():
    _, r = _table()
    w = report.wide(r.frame())
    assert len(w) == 2 * 2 * 3
    assert set(w.role) == {"watermarked", "control"} and set(w["for"]) == {"null_embedding"}
    row = w[(w.role == "watermarked") & (w.strength == "0.5") & (w.seed == 0)].iloc[0]
    assert row.utility == 0.89 and row.score == 0.85 and row.verified == 1.0


def test_wide_reads_the_csv_back(tmp_path):
    from wm import results
    _, r = _table()
    r.save(tmp_path)
    w = report.wide(results.load("attack_suite", tmp_path))
    assert len(w) == 12 and set(w.strength) == {"", "0.5", "0.9"}


def test_summary_reads_survival_and_cost():
    cfg, r = _table()
    s = report.summary(report.wide(r.frame()), cfg).set_index(["method", "attack"])
    row = s.loc["null_embedding", "prune"]
    assert row["survives on every seed"] == "0.5"
    assert row["erased (majority) from"] == "0.9"
    assert row["utility cost there"] == "55.00 points"  # 90 − mean(30, 40)
    assert row["cheap erasure"] is False or row["cheap erasure"] == False  # noqa: E712
    assert row["max utility cost while surviving"] == "1.00 points"
    assert row["control fired"] == "0/4"
    # a cell outside the plan says why instead of a verdict
    cfg2 = suite.Config.from_profile("smoke", methods=("null_embedding",), attacks=("prune", "surrogate"))
    s2 = report.summary(report.wide(r.frame()), cfg2).set_index(["method", "attack"])
    assert s2.loc[("null_embedding", "surrogate"), "survives on every seed"] == "not run"
    assert "image-service" in s2.loc[("null_embedding", "surrogate"), "note"]


def test_the_committed_table_fills_every_planned_cell_with_three_seeds_and_a_control():
    """What the comparison chapter reads: data/results/attack_suite.csv from the published cpu run,
    checked against the parameters it was run with (its sidecar), as the comparison reads it."""
    import dataclasses
    folder = ROOT / "data" / "results"
    meta = json.loads((folder / "attack_suite.json").read_text())
    assert meta["profile"] in ("cpu", "gpu")
    table = results.load("attack_suite", folder)
    w = report.wide(table)
    fields = {f.name for f in dataclasses.fields(suite.Config)} - {"profile"}
    cfg = suite.Config.from_profile(meta["profile"], **{k: v for k, v in meta["parameters"].items() if k in fields})
    for method in cfg.methods:
        for attack in ("none", *(a for a in cfg.attacks if cfg.grid(method, a))):
            mine = w[(w.method == method) & (w.attack == attack)]
            ctl = w[(w["for"] == method) & (w.role == "control") & (w.attack == attack)]
            assert mine.seed.nunique() >= 3, (method, attack)
            assert ctl.seed.nunique() >= 3, (method, attack)
            assert mine.verified.notna().all() and mine.utility.notna().all(), (method, attack)
            if (table.metric == "score").any():  # tables of the registry-driven suite carry the score
                assert mine.score.notna().all(), (method, attack)


def test_each_seed_of_a_run_draws_its_own_data_as_its_one_seed_run_does(monkeypatch):
    """A run over seeds 0 and 1 gives seed 1 the data a one-seed run (a sweep's) draws for it."""
    cfg = suite.Config.from_profile("smoke", methods=("watermas", "deep"))
    real, drawn = suite.setups, []
    kinds = real(cfg, "cpu")
    monkeypatch.setattr(suite, "setups", lambda c, device: drawn.append(c.seed) or real(c, device))
    monkeypatch.setattr(suite, "groups", lambda c: {})  # no training: only the draw is under test
    r = Results("attack_suite", "smoke")
    suite.run_seed(cfg, kinds, 0, r)
    suite.run_seed(cfg, kinds, 1, r)
    assert drawn == [1]  # seed 0 uses the data drawn for it; seed 1 draws its own
    one = real(suite.Config.from_profile("smoke", methods=("watermas", "deep"), seed=1), "cpu")
    again = real(cfg.__class__.from_profile("smoke", methods=("watermas", "deep"), seed=1), "cpu")
    assert torch.equal(one["image-service"].data["test"].clean, again["image-service"].data["test"].clean)
    assert not torch.equal(one["image-service"].data["test"].clean, kinds["image-service"].data["test"].clean)


@pytest.mark.slow
def test_the_spread_spectrum_baseline_marks_as_visibly_as_the_deep_mark_of_its_seed():
    """ss_psnr None: the baseline's PSNR is the one the deep mark measured on the same seed (far from
    the 40 dB a fixed strength would give); a number fixes it instead."""
    def psnrs(**kw):
        cfg = suite.Config.from_profile("smoke", methods=("deep", "spread_spectrum"), attacks=("prune",),
                                        prune_amounts=(0.5,), n_keys=2, **kw)
        r = Results("attack_suite", "smoke")
        suite.run_seed(cfg, suite.setups(cfg, "cpu"), 0, r)
        t = r.frame()
        fid = t[(t.experiment == "invisibility") & (t.metric == "psnr")].set_index("method").value
        return fid["deep"], fid["spread_spectrum"]
    deep, ss = psnrs()  # the smoke deep mark is nearly invisible: 8-bit rounding moves the baseline's by ~1 dB
    assert abs(deep - 40.0) > 5.0 and ss == pytest.approx(deep, abs=1.5)
    assert psnrs(ss_psnr=40.0)[1] == pytest.approx(40.0, abs=1.0)
