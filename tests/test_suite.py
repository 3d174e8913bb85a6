"""wm.attack_suite: the composite service, the survival rules, the plan, the Config, the summary.

The notebook itself runs at the smoke profile in tests/test_notebooks.py (every notebook in
notebooks/ is picked up there).
"""

import json
import math

import pytest
import torch
from torch import nn

from wm import ROOT, STUDIES, attacks, metrics, results
from wm import attack_suite as suite
from wm import image_processing as ip
from wm import watermas as wmas
from wm.models import SmallCNN
from wm.results import ATTACKS as TABLE_ATTACKS
from wm.results import Results
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


@pytest.mark.parametrize("k,verified", [(10, 1.0), (5, 1.0), (4, 0.0), (0, 0.0)])
def test_deep_survival_rule(k, verified):
    delta = ip.watermark_image("logo", 16)
    wmk = ip.DeepWatermark(h=None, r=_ConstantR(delta, k), delta=delta)
    clean = torch.full((10, 3, 16, 16), 0.5)
    outputs = clean + 0.1  # MSE 0.01 against the ground truth: 20 dB
    score = suite.score_images(outputs, clean, wmk, tau=0.9, threshold=0.5)
    assert score["success_rate"] == pytest.approx(k / 10)
    assert score["verified"] == verified
    assert score["psnr"] == pytest.approx(20.0, abs=1e-4)


def test_watermas_reembed_writes_the_thiefs_key_and_leaves_the_input():
    seed_everything(0)
    model = SmallCNN(1, 10, width=4)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wcfg = wmas.Config.from_profile("smoke", n_bits=32)
    pirated, key = suite.watermas_reembed(model, wcfg, x, y, epochs=1, lr=0.01, seed=5, batch_size=32)
    assert wmas.ber(pirated, key) == 0.0  # the sharpness hook holds the thief's keyed weights
    assert key.seed == 5 and len(key) == 32
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_service_piracy_trains_the_thiefs_own_mark_on_the_thiefs_data_and_leaves_the_service():
    cfg = suite.Config.from_profile("smoke", methods=("deep",))
    icfg = cfg.ip_config(0)
    service, *_ = _service(size=cfg.size)
    a = torch.rand(24, 3, cfg.size, cfg.size)
    d = suite.SuiteData(att=ip.Pairs(a=a, clean=a.clone()))
    before = {k: v.clone() for k, v in service.state_dict().items()}
    thief = suite.service_piracy(cfg, icfg, service, d, epochs=1, seed=1000)
    owner_delta = ip.watermark_image("logo", cfg.size)
    assert thief.delta.shape == owner_delta.shape and not torch.equal(thief.delta, owner_delta)  # its own δ′
    assert torch.equal(thief.delta, ip.watermark_image("qr", cfg.size, 1000))
    assert all(torch.equal(v, before[k]) for k, v in service.state_dict().items())
    out = thief.embed(ip.deliver(ip.apply(service, a)))
    assert out.shape == a.shape and 0 <= out.min() and out.max() <= 1


# --- the plan and the Config --------------------------------------------------------------------

def test_every_cell_is_planned_or_explained():
    assert set(suite.ATTACKS) <= set(TABLE_ATTACKS)
    for method in suite.METHODS:
        assert set(suite.PLAN[method]) <= set(suite.ATTACKS)
        for attack in suite.ATTACKS:
            assert (attack in suite.PLAN[method]) != ((method, attack) in suite.NOT_RUN), (method, attack)


def test_grid_follows_the_plan():
    cfg = suite.Config.from_profile("cpu")
    assert cfg.grid("deep", "prune") == list(cfg.prune_amounts) == cfg.grid("watermas", "prune")
    assert cfg.grid("watermas", "overwrite") == list(wmas.OVERWRITE_MODES)
    assert cfg.grid("deep", "overwrite") == list(cfg.overwrite_psnr)
    assert cfg.grid("deep", "distill") == [] and cfg.grid("null_embedding", "surrogate") == []
    assert cfg.grid("deep", "piracy") == [cfg.stage1_epochs]  # the thief's stage 1 at the owner's budget
    only = suite.Config.from_profile("cpu", attacks=("prune",))
    assert only.grid("null_embedding", "finetune") == [] and only.grid("null_embedding", "prune")


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
    (dict(prune_scope="row"), "prune_scope"),
    (dict(quant_bits=(8, 0)), "quant_bits"),
    (dict(sr_threshold=0.0), "sr_threshold"),
    (dict(finetune_epochs=()), "finetune_epochs"),
    (dict(seed=1.5), "seed"),
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
    n = cfg.ne_config(cfg.seed + 2)
    w = cfg.wmas_config()
    i = cfg.ip_config(cfg.seed + 2)
    assert (n.model, n.width, n.n_train, n.epochs, n.seed) == ("smallcnn", cfg.width, cfg.n_train, cfg.epochs, cfg.seed + 2)
    assert (w.width, w.n_train, w.epochs, w.n_bits) == (cfg.width, cfg.n_train, cfg.epochs, cfg.n_bits)
    assert (i.size, i.n_owner, i.n_attacker, i.stage1_epochs, i.seed) == (cfg.size, cfg.n_owner, cfg.n_attacker_pairs,
                                                                         cfg.stage1_epochs, cfg.seed + 2)
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
    add = suite.recorder(r)
    for seed in (0, 1):
        ctl = suite.CONTROL_MODEL["null_embedding"]
        add(seed=seed, method="null_embedding", model="smallcnn", attack="none", strength=None,
            metrics={"test_acc": 0.90, "wm_acc_null": 0.9, "wm_acc_true": 1.0, "verified": 1.0})
        add(seed=seed, method="none", model=ctl, attack="none", strength=None,
            metrics={"test_acc": 0.91, "wm_acc_null": 0.2, "wm_acc_true": 0.0, "verified": 0.0})
        for strength, acc, null, ok in (("0.5", 0.89, 0.85, 1.0), ("0.9", 0.30 + 0.1 * seed, 0.2, 0.0)):
            add(seed=seed, method="null_embedding", model="smallcnn", attack="prune", strength=strength,
                metrics={"test_acc": acc, "wm_acc_null": null, "wm_acc_true": 1.0, "verified": ok})
            add(seed=seed, method="none", model=ctl, attack="prune", strength=strength,
                metrics={"test_acc": acc, "wm_acc_null": 0.1, "wm_acc_true": 0.0, "verified": 0.0})
        add(seed=seed, method="null_embedding", model="smallcnn", attack="prune", strength="0.9",
            metrics={"verified": 1.0}, experiment="suite_thief_claim")  # not a suite row: ignored
    return cfg, r


def test_wide_has_one_row_per_run():
    _, r = _table()
    w = suite.wide(r.frame())
    assert len(w) == 2 * 2 * 3
    assert set(w.role) == {"watermarked", "control"} and set(w["for"]) == {"null_embedding"}
    row = w[(w.role == "watermarked") & (w.strength == "0.5") & (w.seed == 0)].iloc[0]
    assert row.utility == 0.89 and row.score == 0.85 and row.verified == 1.0


def test_wide_reads_the_csv_back(tmp_path):
    from wm import results
    _, r = _table()
    r.save(tmp_path)
    w = suite.wide(results.load("attack_suite", tmp_path))
    assert len(w) == 12 and set(w.strength) == {"", "0.5", "0.9"}


def test_summary_reads_survival_and_cost():
    cfg, r = _table()
    s = suite.summary(suite.wide(r.frame()), cfg).set_index(["method", "attack"])
    row = s.loc["null_embedding", "prune"]
    assert row["survives on every seed"] == "0.5"
    assert row["erased (majority) from"] == "0.9"
    assert row["utility cost there"] == "55.00 points"  # 90 − mean(30, 40)
    assert row["cheap erasure"] is False or row["cheap erasure"] == False  # noqa: E712
    assert row["max utility cost while surviving"] == "1.00 points"
    assert row["control fired"] == "0/4"


def test_the_committed_table_fills_every_planned_cell_with_three_seeds_and_a_control():
    """What the comparison chapter reads: data/results/attack_suite.csv from the published cpu run."""
    folder = ROOT / "data" / "results"
    meta = json.loads((folder / "attack_suite.json").read_text())
    assert meta["profile"] in ("cpu", "gpu")
    w = suite.wide(results.load("attack_suite", folder))
    for method in suite.METHODS:
        for attack in ("none", *suite.PLAN[method]):
            mine = w[(w.method == method) & (w.attack == attack)]
            ctl = w[(w["for"] == method) & (w.role == "control") & (w.attack == attack)]
            assert mine.seed.nunique() >= 3, (method, attack)
            assert ctl.seed.nunique() >= 3, (method, attack)
            assert mine.verified.notna().all() and mine.utility.notna().all(), (method, attack)
