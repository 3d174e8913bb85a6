"""Verdict rules that can fail (issue 17, item 5): each rule states itself in words (`rule`),
takes a small table of per-seed measurements and returns a `Verdict` whose text repeats the rule
next to what it found. tests/test_verdicts.py feeds every rule a table where the claim is false.

* `beats_ablation`: a method's robustness claim against its own ablation at equal attack strength
  (WaterMAS against freeze-only): the claim holds only where the method's detector score beats the
  ablation's by a margin whose 95 % interval over seeds lies above zero, at some strength, and is
  significantly worse at none.
* `pirate_resisted`: a pirate counts as resisted only on seeds where the owner's mark still
  verifies after the piracy and the pirate's own mark does not verify at a cheap utility cost.
* `baseline_decodes`: a comparison with a baseline is testable only where the baseline decodes
  unattacked (its unattacked score reaches its own rule on every seed); otherwise "not testable".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from wm.report import interval


@dataclass(frozen=True)
class Verdict:
    level: bool | str
    """True (holds), False (does not hold), "partly" or "not testable"."""
    rule: str
    found: str

    def text(self) -> str:
        word = {True: "Holds", False: "Does not hold", "partly": "Partly holds",
                "not testable": "Not testable"}[self.level]
        return f"**{word}.** Rule: {self.rule} Found: {self.found}"


def beats_ablation(table: pd.DataFrame) -> Verdict:
    """TABLE: columns strength, seed, method_score, ablation_score (the same seed and attack
    strength for both). Paired per seed, so seed-to-seed variation cancels."""
    rule = ("the method's score exceeds its ablation's at equal attack strength, the 95 % interval of the "
            "paired difference over seeds above 0 at one strength at least and below 0 at none.")
    better, worse = [], []
    for strength, g in table.groupby("strength", sort=False):
        m, h = interval(g.method_score - g.ablation_score)
        if h == h and m - h > 0:  # h is NaN with one seed: nothing is significant then
            better.append(str(strength))
        elif h == h and m + h < 0:
            worse.append(str(strength))
    found = (f"significantly better at {', '.join(better) or 'no strength'}; "
             f"significantly worse at {', '.join(worse) or 'no strength'}.")
    level = bool(better) and not worse
    return Verdict(level if not (better and worse) else "partly", rule, found)


def pirate_resisted(table: pd.DataFrame, cheap: float) -> Verdict:
    """TABLE: one row per seed (and piracy strength): owner_verified, pirate_verified (0/1) and
    cost (the utility the piracy cost, in the method's unit). CHEAP: the largest cost a pirate
    accepts."""
    rule = (f"on every seed the owner's mark still verifies after piracy, and the pirate's own mark does not "
            f"verify at a cost ≤ {cheap:g}.")
    resisted = (table.owner_verified == 1) & ~((table.pirate_verified == 1) & (table.cost <= cheap))
    owner_lost = int((table.owner_verified != 1).sum())
    found = (f"resisted on {int(resisted.sum())} of {len(table)} runs; the owner's own mark failed on "
             f"{owner_lost}.")
    level = bool(len(table)) and bool(resisted.all()) or ("partly" if resisted.any() else False)
    return Verdict(level, rule, found)


def baseline_decodes(unattacked_verified) -> Verdict:
    """UNATTACKED_VERIFIED: the baseline's own rule on its unattacked outputs, one 0/1 per seed."""
    v = pd.Series(list(unattacked_verified), dtype=float)
    rule = "the baseline verifies unattacked on every seed (else a comparison with it cannot fail)."
    found = f"verified unattacked on {int(v.sum())} of {len(v)} seeds."
    return Verdict(True if len(v) and v.eq(1).all() else "not testable", rule, found)
