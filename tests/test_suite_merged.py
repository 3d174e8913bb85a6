"""The suite chapter shown from a sweep over seeds (wm.report.show_sweep, its decision rows left
out): only a sweep whose every run finished, ran the chapter's parameters and covers its seeds is
accepted."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from wm import nulls, report, suite
from wm.results import Results


def _sweep(tmp_path, seeds, finished=None, fixed=None):
    keys = {f"k{s}": {"seeds": "1", "seed": str(s), **(fixed or {})} for s in seeds}
    rows = []
    for s in seeds:
        (tmp_path / "runs" / f"k{s}").mkdir(parents=True)
        (tmp_path / "runs" / f"k{s}" / "done.json").write_text(json.dumps({"wall_seconds": 60.0 + s, "threads": 1,
                                                                         "device": "cpu:x"}))
        rows += [dict(study="attack_suite", method="watermas", model="smallcnn", experiment="suite", attack="none",
                      strength="", seed=s, metric="score", value=0.9, profile="smoke", case=""),
                 dict(study="attack_suite", method="watermas", model="smallcnn", experiment="decision", attack="none",
                      strength="", seed=s, metric="threshold", value=0.6, profile="smoke", case="fpr=0.01")]
    pd.DataFrame(rows).to_csv(tmp_path / "attack_suite.csv", index=False)
    (tmp_path / "attack_suite.json").write_text(json.dumps(
        {"study": "attack_suite", "profile": "smoke", "runs": len(seeds),
         "finished": len(seeds) if finished is None else finished, "keys": keys}))
    return tmp_path / "attack_suite.csv"


def _show(cfg, path):
    results = Results("attack_suite", cfg.profile, cfg.as_dict())
    runs = report.show_sweep(results, "attack_suite", cfg, path, drop=(nulls.DECISION,))
    return results.rows, runs, results


def test_a_complete_sweep_gives_its_rows_without_decisions_and_its_run_times(tmp_path):
    rows, runs, results = _show(suite.Config.from_profile("smoke", seeds=2), _sweep(tmp_path, [0, 1]))
    assert len(rows) == 2 and {r["experiment"] for r in rows} == {"suite"}
    assert rows[0]["strength"] == "" and list(runs.index) == [0, 1] and list(runs.total) == [60.0, 61.0]
    assert [b["minutes"] for b in results.provenance["parameters"]["build"]] == [1.0, 1.02]


@pytest.mark.parametrize("case,match", [("unfinished", "finished"), ("seeds", "cover seeds"),
                                        ("parameters", "n_train"), ("profile", "not attack_suite at cpu")])
def test_a_sweep_that_is_not_this_chapters_is_refused(tmp_path, case, match):
    cfg = suite.Config.from_profile("smoke", seeds=3)
    if case == "unfinished":
        path = _sweep(tmp_path, [0, 1, 2], finished=2)
    elif case == "seeds":
        path = _sweep(tmp_path, [0, 1])
    elif case == "parameters":
        path = _sweep(tmp_path, [0, 1, 2], fixed={"n_train": "1600"})
    else:
        path, cfg = _sweep(tmp_path, [0, 1, 2]), suite.Config.from_profile("cpu")
    with pytest.raises(ValueError, match=match):
        _show(cfg, path)


def _tuning_sweep(folder, seeds, parts=None, fixed=None):
    """A merged tuning sweep: one run per seed of PARTS (None: a run recorded before `parts` existed)."""
    folder.mkdir()
    keys = {}
    for s in seeds:
        key = f"k{s}"
        keys[key] = {"seeds": "1", "seed": str(s), **({"parts": parts} if parts else {}), **(fixed or {})}
        (folder / "runs" / key).mkdir(parents=True)
        (folder / "runs" / key / "done.json").write_text(json.dumps({"wall_seconds": 60.0, "threads": 1, "device": "cpu:x"}))
    pd.DataFrame([dict(study="tuning", method="deep", model="unet", experiment="e", attack="none", strength="", seed=s,
                       metric="psnr", value=35.0, profile="smoke", case=str(parts)) for s in seeds]) \
        .to_csv(folder / "tuning.csv", index=False)
    (folder / "tuning.json").write_text(json.dumps({"study": "tuning", "profile": "smoke", "runs": len(seeds),
                                                    "finished": len(seeds), "keys": keys}))
    return str(folder / "tuning.csv")


def test_a_chapter_split_by_part_takes_several_sweeps_that_cover_every_part_of_every_seed_once(tmp_path):
    from wm import tuning
    cfg = tuning.Config.from_profile("smoke", seeds=2)
    old = _tuning_sweep(tmp_path / "old", [0, 1])  # before `parts`: ne and image
    new = _tuning_sweep(tmp_path / "new", [0, 1], parts="suite")
    newer = _tuning_sweep(tmp_path / "newer", [0, 1], parts="layout,thief")  # parts added later still
    results = Results("tuning", "smoke", cfg.as_dict())
    runs = report.show_sweep(results, "tuning", cfg, f"{old}+{new}+{newer}")
    assert len(results.rows) == 6
    assert sorted(runs.parts) == ["layout,thief", "layout,thief", "ne,image", "ne,image", "suite", "suite"]
    assert "parts=layout,thief" in results.provenance["parameters"]["build"][-1]["parameters"]
    for merged, match in ((f"{old}+{newer}", "every part"),  # the suite part is missing
                          (f"{old}+{new}+{newer}+{_tuning_sweep(tmp_path / 'again', [1], parts='suite')}",
                           "every part"),  # twice
                          (f"{old}+{newer}+{_tuning_sweep(tmp_path / 'other', [0, 1], parts='suite', fixed={'ip_n_val': '9'})}",
                           "ip_n_val")):
        with pytest.raises(ValueError, match=match):
            report.show_sweep(Results("tuning", "smoke", cfg.as_dict()), "tuning", cfg, merged)
    with pytest.raises(ValueError, match="not split"):
        _show(suite.Config.from_profile("smoke", seeds=2), f"{old}+{new}")
