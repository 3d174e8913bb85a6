"""wm.report's verdict rules: every rule is fed a table where the claim is false and must say so."""

import pandas as pd

from wm import report as verdicts


def _pairs(diffs_by_strength):
    rows = []
    for strength, diffs in diffs_by_strength.items():
        for seed, d in enumerate(diffs):
            rows.append({"strength": strength, "seed": seed, "method_score": 0.5 + d, "ablation_score": 0.5})
    return pd.DataFrame(rows)


def test_beats_ablation_holds_only_with_a_significant_margin():
    assert verdicts.beats_ablation(_pairs({"0.5": [0.20, 0.22, 0.18], "0.9": [0.0, 0.01, -0.01]})).level is True
    # false claims: equal at every strength (WaterMAS = freeze-only), or better on one seed only
    equal = verdicts.beats_ablation(_pairs({"0.5": [0.0, 0.0, 0.0], "0.9": [0.01, -0.01, 0.0]}))
    assert equal.level is False and "no strength" in equal.found
    assert verdicts.beats_ablation(_pairs({"0.5": [0.3]})).level is False  # one seed: nothing is significant
    assert verdicts.beats_ablation(_pairs({"0.5": [0.3, -0.2, 0.25]})).level is False  # noise, not a margin
    mixed = verdicts.beats_ablation(_pairs({"0.5": [0.2, 0.21, 0.19], "0.9": [-0.2, -0.21, -0.19]}))
    assert mixed.level == "partly"
    assert "Rule:" in equal.text() and "Does not hold" in equal.text()


def test_a_pirate_is_resisted_only_where_the_owner_still_verifies():
    ok = pd.DataFrame({"owner_verified": [1, 1, 1], "pirate_verified": [0, 1, 0], "cost": [0.5, 9.0, 0.2]})
    assert verdicts.pirate_resisted(ok, cheap=2).level is True  # the one pirate that verified paid 9 points
    # the claim is false: the pirate's mark fails, but so does the owner's (λ = 200 and 2000 in the study)
    both_fail = pd.DataFrame({"owner_verified": [0, 0, 0], "pirate_verified": [0, 0, 0], "cost": [0.1, 0.1, 0.1]})
    v = verdicts.pirate_resisted(both_fail, cheap=2)
    assert v.level is False and "failed on 3" in v.found
    cheap_pirate = pd.DataFrame({"owner_verified": [1, 1], "pirate_verified": [1, 1], "cost": [0.3, 0.1]})
    assert verdicts.pirate_resisted(cheap_pirate, cheap=2).level is False
    some = pd.DataFrame({"owner_verified": [1, 0], "pirate_verified": [0, 0], "cost": [0.3, 0.1]})
    assert verdicts.pirate_resisted(some, cheap=2).level == "partly"


def test_an_attack_fails_only_where_it_succeeds_on_no_seed():
    def table(successes):  # settings a, b × seeds 0..2
        return pd.DataFrame({"setting": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "success": successes})
    assert verdicts.attacker_fails(table([0] * 6), "the pirate verifies").level is True
    # the claim is false: the pirate succeeds on every seed of setting b
    v = verdicts.attacker_fails(table([0, 0, 0, 1, 1, 1]), "the pirate verifies")
    assert v.level is False and "every seed in 1 (b)" in v.found and v.rule.startswith("the pirate verifies")
    # on one seed only: seed-dependent, not a finding either way
    assert verdicts.attacker_fails(table([0, 1, 0, 0, 0, 0]), "x").level == "partly"
    assert verdicts.attacker_fails(table([0] * 6)[:0], "x").level == "not testable"


def test_a_claim_across_settings_holds_only_on_every_seed_of_every_setting():
    def table(successes):
        return pd.DataFrame({"setting": ["unet"] * 3 + ["ceilnet"] * 3, "seed": [0, 1, 2] * 2, "success": successes})
    assert verdicts.holds_across(table([1] * 6), "x").level is True
    # the claim is false: no surrogate carries the logo on any seed
    v = verdicts.holds_across(table([0] * 6), "x")
    assert v.level is False and "unet 0/3" in v.found
    assert verdicts.holds_across(table([1, 1, 1, 1, 0, 0]), "x").level == "partly"


def test_a_ratio_claim_must_hold_on_every_seed():
    assert verdicts.ratio_holds([3.3, 2.1, 1.8], 1.5, 1.05, "x").level is True
    # the claim is false: on one seed the method is no sharper than its ablation, however high the mean
    v = verdicts.ratio_holds([6.0, 5.0, 0.9], 1.5, 1.05, "x")
    assert v.level is False and "0.90×" in v.found
    assert verdicts.ratio_holds([1.2, 1.6, 1.3], 1.5, 1.05, "x").level == "partly"
    assert verdicts.ratio_holds([], 1.5, 1.05, "x").level is False


def test_a_baseline_that_does_not_decode_unattacked_makes_the_comparison_not_testable():
    assert verdicts.baseline_decodes([1, 1, 1]).level is True
    v = verdicts.baseline_decodes([0, 0, 1])  # the spread-spectrum baseline at 32×32: 0.87 / 0.76 / 0.67 bits
    assert v.level == "not testable" and "1 of 3" in v.found
    assert verdicts.baseline_decodes([]).level == "not testable"


def test_a_verdict_line_can_print_its_rule_without_its_word():
    import pandas as pd
    v = verdicts.pirate_resisted(pd.DataFrame({"owner_verified": [0], "pirate_verified": [0], "cost": [0.0]}), 0.02)
    assert v.explain().startswith("Rule: ") and "Found: " in v.explain() and "**" not in v.explain()
    assert v.level is False  # the pirate failed, but so did the owner: no resistance
    assert verdicts.verdict("not testable", "x").startswith("**Not testable here.**")


def test_the_amplitude_aware_rule_refuses_a_faint_logo_that_the_nc_accepts():
    """Counter-example for the centred-NC success rule: a tenth of the logo on a grey field has NC 1
    (it succeeds at every τ) but carries 0.1 of δ's contrast, so the amplitude-aware rule refuses it."""
    import torch

    from wm import image_processing as ip
    delta = (torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    wmk = type("W", (), {"delta": delta})()
    full = ip.verify_extracted(wmk, delta.repeat(4, 1, 1, 1), tau=0.9)
    faint = ip.verify_extracted(wmk, 0.5 + 0.1 * delta.repeat(4, 1, 1, 1), tau=0.9)
    assert full.success_rate == 1 and full.success_rate_amp == 1 and abs(full.gain - 1).max() < 1e-5
    assert faint.success_rate == 1 and faint.success_rate_amp == 0 and abs(faint.gain - 0.1).max() < 1e-5
    curve = faint.success_over([0.5, 0.99])
    assert curve.iloc[:, 1].tolist() == [1.0, 1.0] and curve.iloc[:, 2].tolist() == [0.0, 0.0]


def test_beats_ablation_is_not_testable_between_marks_of_unequal_visibility():
    stronger = _pairs({"6": [0.3, 0.31, 0.29]})
    assert verdicts.beats_ablation(stronger).level is True
    assert verdicts.beats_ablation(stronger, costs=(31.7, 40.1), tolerance=1.0).level == "not testable"
    assert verdicts.beats_ablation(stronger, costs=(39.8, 40.1), tolerance=1.0).level is True
    assert verdicts.beats_ablation(_pairs({"6": [0.0, 0.01, -0.01]}), costs=(40.0, 40.2)).level is False
