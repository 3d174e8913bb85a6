"""`python -m wm sweep`: usage errors, keys, the merged table, a killed and resumed sweep, Dask.

The slow tests run quickstart at the smoke profile on a tiny subset (six seeds): a run costs
~15 CPU-seconds, nearly all of it starting Python, torch and a Jupyter kernel.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from wm import ROOT, runner, sweep

SEEDS = "0,1,2,3,4,5"
# one fixed, tiny configuration; one intra-op thread as Dask's workers set (OMP_NUM_THREADS=1 is
# distributed's default for the processes it spawns), so that both ways compute the same floats
SWEEP = ["sweep", "quickstart", "--profile", "smoke", "--grid", f"seed={SEEDS}",
         "-p", "n_train", "512", "-p", "n_test", "256"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _wm(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "wm", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def _done(out: Path) -> dict[str, bytes]:
    """key -> the bytes of its done.json, for every finished run in the sweep folder OUT."""
    return {p.parent.name: p.read_bytes() for p in (out / "runs").glob("*/done.json")}


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)  # as text: compared exactly


# ------------------------------------------------------------------------------ usage errors


@pytest.mark.parametrize("args,needle", [
    (["sweep", "quickstart"], "at least one --grid"),
    (["sweep", "quickstart", "--grid", "seed"], "NAME=V1,V2"),
    (["sweep", "quickstart", "--grid", "seed="], "empty value"),
    (["sweep", "quickstart", "--grid", "seed=1,,2"], "empty value"),
    (["sweep", "quickstart", "--grid", "seed=1", "--grid", "seed=2"], "given twice"),
    (["sweep", "quickstart", "--grid", "seed=1", "--workers", "0"], "--workers 0"),
    (["sweep", "nosuch", "--grid", "seed=1"], "unknown study 'nosuch'"),
    (["sweep", "quickstart", "--grid", "nosuch=1,2"], "unknown parameter 'nosuch'"),
    (["sweep", "quickstart", "--profile", "turbo", "--grid", "seed=1"], "unknown profile 'turbo'"),
    (["sweep", "quickstart", "--grid", "seed=1", "-p", "seed", "2"], "both swept"),
    (["sweep", "quickstart", "--profile", "smoke", "--grid", "seed=0,1,2,'x'"], "seed='x'"),
    (["sweep", "quickstart", "--profile", "smoke", "--grid", "seed=1,1"], "same run twice"),
    (["sweep", "quickstart", "--grid", "seed=1", "--workers", "2", "--scheduler", "tcp://h:8786"],
     "--workers"),
    (["sweep", "quickstart", "--grid", "seed=1", "--scheduler", "notaurl"], "not a Dask scheduler address"),
    (["sweep", "quickstart", "--grid", "seed=1", "--scheduler", "tcp://host"], "not a Dask scheduler address"),
    (["sweep", "quickstart", "--grid", "seed=1", "--scheduler", "tcp://host:99999"], "not a Dask scheduler address"),
    (["sweep", "quickstart", "--grid", "seed=1", "--threads", "0"], "--threads 0"),
    (["sweep", "quickstart", "--grid", "seed=1", "--workers", str((os.cpu_count() or 1) + 1)], "cores"),
    (["sweep", "quickstart", "--grid", "seed=1", "--threads", str((os.cpu_count() or 1) + 1)], "cores"),
    (["sweep", "quickstart", "--profile", "smoke", "--grid", "epochs=1,nan"], "epochs=nan"),
])
def test_usage_errors_are_one_line_exit_2_and_write_nothing(tmp_path, args, needle):
    out = tmp_path / "sweep"
    done = _wm(*args, "--out", str(out))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert not out.exists()


@pytest.mark.parametrize("out,needle", [("README.md", "is a file"), ("README.md/sub", "cannot be created"),
                                        ("data/results", "--publish")])
def test_a_bad_sweep_folder_is_refused(out, needle):
    done = _wm("sweep", "quickstart", "--grid", "seed=1", "--out", out)
    assert done.returncode == 2 and needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


# -------------------------------------------------------------------- keys and the merged table


def test_grid_is_the_cartesian_product_and_keys_ignore_order():
    grid = sweep.parse_grid(["seed=0,1,2", "lr=0.1, 0.05"])
    assert grid == {"seed": ["0", "1", "2"], "lr": ["0.1", "0.05"]}
    a = sweep.plan("quickstart", "smoke", grid, {"epochs": "1"}, out=Path("unused"))
    b = sweep.plan("quickstart", "smoke", dict(reversed(grid.items())), {"epochs": "1"}, out=Path("unused"))
    assert len(a.runs) == 6 and {r.key for r in a.runs} == {r.key for r in b.runs}
    assert len({r.key for r in a.runs}) == 6
    assert a.runs[0].grid == {"seed": 0, "lr": 0.1} and a.runs[0].args == {"epochs": "1", "seed": "0", "lr": "0.1"}
    # the key covers the profile, the fixed parameters and the code version
    assert sweep.plan("quickstart", "cpu", grid, {"epochs": "1"}).runs[0].key != a.runs[0].key
    assert sweep.plan("quickstart", "smoke", grid, {"epochs": "2"}).runs[0].key != a.runs[0].key
    key = sweep.run_key("quickstart", "smoke", {"seed": 0}, "c+1", 1, "cpu:x")
    assert key != sweep.run_key("quickstart", "smoke", {"seed": 0}, "c+2", 1, "cpu:x")


def test_the_thread_count_and_the_device_are_part_of_the_key():
    """They change CPU results at float level: runs that differ in them never share a key."""
    grid = {"seed": ["0"]}
    one = sweep.plan("quickstart", "smoke", grid, {}, threads=1).runs[0].key
    assert sweep.plan("quickstart", "smoke", grid, {}, threads=2).runs[0].key != one
    assert sweep.run_key("quickstart", "smoke", {"seed": 0}, "c", 1, "cpu:A") != \
        sweep.run_key("quickstart", "smoke", {"seed": 0}, "c", 1, "cpu:B")
    # a local sweep with one thread per run and a Dask sweep (one thread by default) share keys
    local = sweep.plan("quickstart", "smoke", grid, {}, workers=os.cpu_count() or 1)
    dask = sweep.plan("quickstart", "smoke", grid, {}, scheduler="tcp://h:8786")
    assert local.threads == dask.threads == 1 and local.runs[0].key == dask.runs[0].key == one
    # by default local workers share the cores
    assert sweep.plan("quickstart", "smoke", grid, {}, workers=1).threads == os.cpu_count()


def test_an_uncommitted_edit_changes_the_code_version(tmp_path, monkeypatch):
    (tmp_path / "wm").mkdir()
    (tmp_path / "notebooks").mkdir()
    shutil.copy(runner.notebook_path("quickstart"), tmp_path / "notebooks")
    (tmp_path / "wm" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(sweep, "ROOT", tmp_path)
    monkeypatch.setattr(runner, "NOTEBOOKS", tmp_path / "notebooks")
    before = sweep.source_hash("quickstart")
    assert sweep.source_hash("quickstart") == before  # stable
    (tmp_path / "wm" / "a.py").write_text("x = 2\n")
    assert sweep.source_hash("quickstart") != before
    (tmp_path / "wm" / "a.py").write_text("x = 1\n")
    assert sweep.source_hash("quickstart") == before
    (tmp_path / "notebooks" / "quickstart.ipynb").write_text("{}")
    assert sweep.source_hash("quickstart") != before


def _fake_sweep(tmp_path: Path, tables: list[str]) -> sweep.Sweep:
    """A sweep whose runs are finished with the given result tables (CSV text), nothing executed."""
    plan = sweep.plan("quickstart", "smoke", {"seed": [str(i) for i in range(len(tables))]}, {}, out=tmp_path)
    for run, text in zip(plan.runs, tables):
        (plan.folder(run) / "results").mkdir(parents=True)
        (plan.folder(run) / "results" / "quickstart.csv").write_text(text)
        (plan.folder(run) / "done.json").write_text("{}")
    return plan


HEADER = "study,method,model,experiment,attack,strength,seed,metric,value,profile\n"
ROW = "quickstart,none,smallcnn,robustness,prune,{strength},{seed},test_acc,{value},smoke\n"


def test_merge_adds_param_and_run_columns_and_keeps_every_row(tmp_path):
    plan = _fake_sweep(tmp_path, [
        HEADER + ROW.format(strength=0.1, seed=0, value=0.5) + ROW.format(strength=0.3, seed=0, value=0.25),
        HEADER + ROW.format(strength=0.1, seed=1, value=0.75)])
    table = _read(sweep.merge(plan))
    assert list(table.columns[-2:]) == ["param_seed", "run"]
    assert table.param_seed.tolist() == ["0", "0", "1"] and table.value.tolist() == ["0.5", "0.25", "0.75"]
    assert table.run.tolist() == [plan.runs[0].key] * 2 + [plan.runs[1].key]
    side = json.loads((tmp_path / "quickstart.json").read_text())
    assert side["finished"] == 2 and side["rows"] == 3
    assert side["threads"] == plan.threads and side["device"] == plan.device


def test_a_failed_run_is_reported_the_others_finish_and_a_rerun_retries_only_it(tmp_path, monkeypatch):
    """The orchestration alone, with `execute` (the child process) replaced by a fake."""
    calls = []

    def fake_execute(study, profile, args, out, threads=1, allow_cpu=False):
        calls.append(args["seed"])
        if args["seed"] == "1" and calls.count("1") == 1:
            raise sweep.RunFailed("exit 1: boom")
        (out / "results").mkdir(parents=True)
        (out / "results" / "quickstart.csv").write_text(HEADER + ROW.format(strength=0.1, seed=args["seed"],
                                                                            value=0.5))
        return 0.1

    monkeypatch.setattr(sweep, "execute", fake_execute)
    plan = sweep.plan("quickstart", "smoke", {"seed": ["0", "1", "2"]}, {}, out=tmp_path)
    assert sweep.run(plan, workers=2) == 1
    assert [plan.done(r) for r in plan.runs] == [True, False, True]
    assert _read(tmp_path / "quickstart.csv").param_seed.tolist() == ["0", "2"]
    done = json.loads((plan.folder(plan.runs[0]) / "done.json").read_text())
    assert done["parameters"] == {"seed": "0"} and done["code_version"] == plan.code
    assert sweep.run(plan, workers=2) == 0  # only the failed run again
    assert sorted(calls) == ["0", "1", "1", "2"]
    assert _read(tmp_path / "quickstart.csv").param_seed.tolist() == ["0", "1", "2"]


@pytest.mark.slow
def test_controls_sharing_a_key_all_reach_the_table_with_a_changed_threshold(tmp_path):
    """null embedding's false-positive controls share every column but `case`: the merged table
    holds all of them (before, 4 rows per run were dropped, and -p threshold 0.05 raised)."""
    out = tmp_path / "ne"
    done = _wm("sweep", "null_embedding", "--profile", "smoke", "--grid", "seed=0", "-p", "threshold", "0.05",
               "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr
    table = _read(out / "null_embedding.csv")
    (key,) = set(table.run)
    own = _read(out / "runs" / key / "results" / "null_embedding.csv")
    assert len(table) == len(own)
    fp = table[table.experiment == "false_positive"]
    # per seed: the clean model under 2 signatures, the pirate's claim, the random signatures, the
    # altered and forged ones and the owner's own; 3 metrics each (wm.ne_study)
    from wm.null_embedding import Config
    cfg = Config.from_profile("smoke")
    checks = 6 + cfg.n_random_signatures
    assert fp.case.nunique() == checks and len(fp) == 3 * checks * cfg.seeds


# --------------------------------------------------------------- killed, resumed, and on Dask


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The six-run sweep on two local workers, killed (with its whole process group) as soon as
    two runs are finished, then the same command again, to completion."""
    out = tmp_path_factory.mktemp("local") / "sweep"
    code = sweep.code_version("quickstart")
    cmd = [sys.executable, "-m", "wm", *SWEEP, "--workers", "2", "--out", str(out)]
    with open(out.parent / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while len(_done(out)) < 2:
                assert proc.poll() is None, (out.parent / "first.log").read_text()
                assert time.monotonic() < deadline, "no two runs finished in 300 s"
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    at_kill = _done(out)
    folders = {p.name for p in (out / "runs").iterdir()}
    table_at_kill = _read(out / "quickstart.csv") if (out / "quickstart.csv").exists() else None
    stamps = {k: (out / "runs" / k / "results" / "quickstart.csv").stat().st_mtime_ns for k in at_kill}
    second = _wm(*SWEEP, "--workers", "2", "--out", str(out), timeout=600)
    return dict(code=code, out=out, at_kill=at_kill, folders=folders, table_at_kill=table_at_kill, stamps=stamps,
                second=second)


def _same_code(resumed):
    """Run keys include the code version: an edit of wm/ while these tests run changes them."""
    assert sweep.code_version("quickstart") == resumed["code"], \
        "wm/ or notebooks/quickstart.ipynb changed while the test ran (the run keys with it): rerun it"


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_redoes_only_the_unfinished_runs(resumed):
    out, at_kill, second = resumed["out"], resumed["at_kill"], resumed["second"]
    _same_code(resumed)
    assert second.returncode == 0, second.stderr
    # the kill left work undone: fewer than six finished (and a started run, if any, without done.json)
    assert 2 <= len(at_kill) < 6
    # a table written while the sweep ran holds finished runs only
    if resumed["table_at_kill"] is not None:
        assert set(resumed["table_at_kill"].run) <= set(at_kill)
    assert f"{len(at_kill)} of 6 runs already finished; {6 - len(at_kill)} to run" in second.stderr

    done = _done(out)
    assert len(done) == 6 and set(at_kill) <= set(done)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(done)  # no leftovers
    for key, before in at_kill.items():  # the finished runs were not executed again
        assert done[key] == before
        assert (out / "runs" / key / "results" / "quickstart.csv").stat().st_mtime_ns == resumed["stamps"][key]
    seeds = sorted(json.loads(v)["parameters"]["seed"] for v in done.values())
    assert seeds == SEEDS.split(",")

    table = _read(out / "quickstart.csv")
    per_run = {key: _read(out / "runs" / key / "results" / "quickstart.csv") for key in done}
    assert len(table) == sum(len(t) for t in per_run.values())
    ident = [c for c in table.columns if c != "value" and not c.startswith("param_")]
    assert not table.duplicated(ident).any()  # exactly one row per measurement
    assert set(table.run) == set(done)
    assert (table.seed == table.param_seed).all()  # each row landed in its own run's rows
    for key, own in per_run.items():
        rows = table[table.run == key].drop(columns=["param_seed", "run"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(rows, own)


@pytest.mark.slow
def test_the_same_sweep_on_a_dask_cluster_gives_the_same_table(resumed, tmp_path):
    from distributed import LocalCluster

    local = _read(resumed["out"] / "quickstart.csv")
    out = tmp_path / "sweep"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        done = _wm(*SWEEP, "--scheduler", cluster.scheduler_address, "--out", str(out), timeout=600)
        _same_code(resumed)
        assert done.returncode == 0, done.stderr
        on_dask = _read(out / "quickstart.csv")
        # the same runs, keyed alike, and every number equal to the last printed digit
        key = ["run", *[c for c in local.columns if c not in ("value", "run")]]
        pd.testing.assert_frame_equal(local.sort_values(key).reset_index(drop=True),
                                      on_dask.sort_values(key).reset_index(drop=True))
        # the workers' files came back: each run folder is complete, done.json last
        for run in (out / "runs").iterdir():
            assert {"done.json", "quickstart.ipynb", "run.log"} <= {p.name for p in run.iterdir()}
            assert (run / "results" / "quickstart.csv").is_file()
        # a finished sweep reruns nothing and leaves its table as it was
        table = (out / "quickstart.csv").read_bytes()
        again = _wm(*SWEEP, "--scheduler", cluster.scheduler_address, "--out", str(out), timeout=120)
        assert again.returncode == 0 and "6 of 6 runs already finished; 0 to run" in again.stderr, again.stderr
        assert (out / "quickstart.csv").read_bytes() == table


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_its_runs(tmp_path):
    """A stopped sweep stops the runs it started: none goes on writing into the sweep folder."""
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "wm", *SWEEP, "--out", str(out)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("runs/*/run.log")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out) not in ps, "a run of the stopped sweep is still running"
