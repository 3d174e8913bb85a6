"""wm.results: the tidy table, its vocabulary, provenance and atomic writes."""

import json
import os

import pandas as pd
import pytest

from wm import results
from wm.results import COLUMNS, Results


def _table():
    r = Results("null_embedding", "smoke", {"seed": 0})
    r.add(method="null_embedding", model="smallcnn", experiment="fidelity", seed=0, metric="test_acc", value=0.91)
    r.add(method="null_embedding", model="smallcnn", experiment="robustness", attack="prune", strength=0.5,
          seed=0, metric="wm_acc_null", value=0.5)
    return r


def test_save_writes_table_and_sidecar(tmp_path):
    path = _table().save(tmp_path)
    df = pd.read_csv(path, keep_default_na=False)
    assert list(df.columns) == list(COLUMNS) and len(df) == 2
    assert df.loc[0, "strength"] == "" and float(df.loc[1, "strength"]) == 0.5
    side = json.loads(path.with_suffix(".json").read_text())
    for key in ("commit", "device", "versions", "parameters", "started", "wall_seconds"):
        assert key in side
    assert side["parameters"] == {"seed": 0} and side["rows"] == 2 and "torch" in side["versions"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_load_round_trip(tmp_path):
    _table().save(tmp_path)
    df = results.load("null_embedding", tmp_path)
    assert df.value.tolist() == [0.91, 0.5] and df.strength.tolist() == ["", "0.5"]
    with pytest.raises(FileNotFoundError, match="wm run watermas"):
        results.load("watermas", tmp_path)


def test_results_go_to_the_runs_folder_never_to_the_published_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("WM_OUT", str(tmp_path / "r"))
    assert _table().save().parent == tmp_path / "r" / "results"
    # without the runner's WM_OUT: a scratch folder under runs/, named once per process
    monkeypatch.delenv("WM_OUT")
    monkeypatch.setattr(results, "_scratch", None)
    monkeypatch.setattr(results, "SCRATCH", tmp_path / "runs")
    table = _table()
    assert results.results_dir().parent.parent == tmp_path / "runs"
    assert results.results_dir().parent.name.startswith("null_embedding-smoke-")
    assert table.save().parent == results.results_dir() != results.PUBLISHED_RESULTS


def test_one_measurement_is_recorded_once_and_case_tells_controls_apart():
    r = _table()
    with pytest.raises(ValueError, match="twice"):
        r.add(method="null_embedding", model="smallcnn", experiment="fidelity", seed=0, metric="test_acc", value=0.5)
    r.add(method="null_embedding", model="smallcnn", experiment="false_positive", seed=0, metric="verified",
          value=0.0, case="random signature")
    r.add(method="null_embedding", model="smallcnn", experiment="false_positive", seed=0, metric="verified",
          value=0.0, case="forged signature")
    assert r.frame().case.tolist() == ["", "", "random signature", "forged signature"]


def test_tables_without_the_case_column_still_load(tmp_path):
    (tmp_path / "watermas.csv").write_text("study,method,model,experiment,attack,strength,seed,metric,value,profile\n"
                                           "watermas,none,smallcnn,fidelity,none,,0,test_acc,0.9,cpu\n")
    assert results.load("watermas", tmp_path).case.tolist() == [""]


@pytest.mark.parametrize("kw,msg", [
    (dict(metric="accuracy"), "unknown metric"),
    (dict(attack="jpeg"), "unknown attack"),
    (dict(metric="test_acc", value=1.5), "must lie in"),
    (dict(strength=3), "no strength"),
])
def test_vocabulary_is_enforced(kw, msg):
    r = Results("watermas", "cpu")
    row = dict(method="watermas", model="resnet18", experiment="fidelity", seed=0, metric="ber", value=0.0)
    row.update(kw)
    with pytest.raises(ValueError, match=msg):
        r.add(**row)


def test_unknown_study_and_profile():
    with pytest.raises(ValueError, match="unknown study"):
        Results("nosuch", "cpu")
    with pytest.raises(ValueError, match="resolve auto"):
        Results("watermas", "auto")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "t.csv"
    results.atomic_write_text(target, "old\n")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        results.atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
