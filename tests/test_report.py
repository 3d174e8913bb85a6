"""wm.report: what the notebooks share, and that no notebook writes a helper another one has."""

import ast
import json
import math
from collections import defaultdict

import pytest

from wm import report, runner
from wm.results import Results


def test_record_writes_one_row_per_metric():
    r = Results("watermas", "smoke")
    report.record(r, "watermas", "smallcnn", "robustness", {"test_acc": 0.9, "ber": 0.0}, seed=3, attack="prune",
                  strength=0.5, case="layer")
    f = r.frame()
    assert f.metric.tolist() == ["test_acc", "ber"] and (f.seed == 3).all() and (f.case == "layer").all()


def test_interval_leaves_out_nan_and_never_claims_certainty_from_one_value():
    m, h = report.interval([1.0, float("nan"), 3.0])
    assert m == 2.0 and h > 0
    m, h = report.interval([0.5])
    assert m == 0.5 and math.isnan(h)  # one value: the spread is unknown, not 0
    assert math.isnan(report.interval([])[0])
    assert report.ci_text([0.5]) == "0.50" and report.ci_text([0.5, 0.7], scale=100, digits=1).startswith("60.0 ± ")


@pytest.mark.parametrize("level,word", [(True, "Holds here."), (False, "Does not hold here."),
                                        ("partly", "Partly holds here."), ("measured", "Measured")])
def test_verdict_words(level, word):
    assert report.verdict(level, "x").startswith(f"**{word}")


def test_no_two_notebooks_define_the_same_helper():
    defined = defaultdict(list)
    for study in runner.studies():
        nb = json.loads(runner.notebook_path(study).read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                for node in ast.parse("".join(cell["source"])).body:
                    if isinstance(node, ast.FunctionDef):
                        defined[node.name].append(study)
    shared = {name: where for name, where in defined.items() if len(where) > 1}
    assert not shared, f"helpers written in several notebooks (move them to wm/report.py): {shared}"
