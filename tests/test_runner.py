"""The runner's command line: bad requests fail early (one line, exit 2, nothing written), runs
write into their own folder, and only publishing touches book/ and data/results/."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wm import ROOT, results, runner

PUBLISHED = [ROOT / "book", ROOT / "data" / "results"]


def _wm(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "wm", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _snapshot(folders=PUBLISHED) -> dict[str, str]:
    """Path -> SHA-256 of every file under FOLDERS (what 'nothing published changed' compares)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def _scratch() -> set[Path]:
    return set((ROOT / "data" / "runs").glob("*")) if (ROOT / "data" / "runs").is_dir() else set()


@pytest.fixture
def unchanged():
    """Asserts, after the test, that nothing under book/ or data/results/ changed and that no
    scratch run was left behind by it."""
    before, runs = _snapshot(), _scratch()
    yield
    assert _snapshot() == before, "a run changed the published book or tables"
    assert _scratch() == runs, "a refused command wrote a run folder"


@pytest.mark.parametrize("args,needle", [
    (["run", "nosuch"], "unknown study 'nosuch'"),
    (["run", "../notebooks/watermas"], "unknown study '../notebooks/watermas'"),
    (["run", "notebooks/watermas.ipynb"], "unknown study 'notebooks/watermas.ipynb'"),
    (["run", "watermas.ipynb"], "unknown study 'watermas.ipynb'"),
    (["run", str(ROOT / "notebooks" / "watermas")], "unknown study"),
    (["run", ""], "unknown study ''"),
    (["run", "quickstart", "--profile", "turbo"], "unknown profile 'turbo'"),
    (["run", "quickstart", "-p", "nosuch", "1"], "unknown parameter 'nosuch'"),
    (["run", "quickstart", "-p", "profile", "gpu"], "--profile"),
    (["run", "quickstart", "-p", "epochs", "-1"], "epochs=-1"),
    (["run", "quickstart", "-p", "epochs", "1e309"], "epochs=inf"),
    (["run", "quickstart", "-p", "epochs", "nan"], "epochs=nan"),
    (["run", "quickstart", "-p", "epochs", "1e9"], "epochs=1000000000.0"),
    (["run", "quickstart", "-p", "n_train", "'many'"], "n_train='many'"),
    (["run", "quickstart", "-p", "n_train", "True"], "n_train=True"),
    (["run", "quickstart", "-p", "seed", "-1"], "seed=-1"),
    (["run", "quickstart", "-p", "seed", "10**30"], "seed='10**30'"),
    (["run", "quickstart", "-p", "seed", "1000000000000"], "seed=1000000000000"),
    (["run", "null_embedding", "-p", "lam", "inf"], "lam=inf"),
    (["run", "null_embedding", "-p", "threshold", "nan"], "threshold=nan"),
    (["run", "null_embedding", "-p", "stamp_fraction", "inf"], "stamp_fraction=inf"),
    (["run", "null_embedding", "-p", "seeds", "1000000000"], "seeds=1000000000"),
    (["run", "null_embedding", "-p", "n_train", "1"], "n_train=1"),
    (["run", "quickstart", "--out", "/dev/null"], "--out /dev/null is a file"),
    (["run", "quickstart", "--out", "README.md"], "--out README.md is a file"),
    (["run", "quickstart", "--out", "README.md/sub"], "cannot be created"),
    (["run", "quickstart", "--out", "book"], "--publish instead"),
    (["run", "quickstart", "--out", "data/results/x"], "--publish instead"),
    (["run", "quickstart", "--publish", "--out", "elsewhere"], "leave out --out"),
    (["run", "quickstart", "--profile", "gpu"], "--allow-cpu"),
    (["book", "--profile", "turbo"], "unknown profile"),
])
def test_usage_errors_are_one_line_exit_2_and_write_nothing(unchanged, args, needle):
    if args[1:2] == ["quickstart"] and "--profile" in args and "gpu" in args:
        pytest.importorskip("torch").cuda.is_available() and pytest.skip("this machine has CUDA")
    done = _wm(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr


def test_a_partial_wm_data_folder_is_named_before_the_kernel_starts(tmp_path, unchanged):
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    out = tmp_path / "out"
    done = _wm("run", "quickstart", "--profile", "smoke", "--out", str(out), env=dict(os.environ, WM_DATA=str(tmp_path)))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "fashion-mnist (from WM_DATA) lacks train-labels" in lines[0], done.stderr
    assert not out.exists()


def test_parameters_cell_is_read():
    params = runner.notebook_parameters(runner.notebook_path("quickstart"))
    assert params["profile"] == "auto" and "seed" in params and params["seed"] is None


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), ("true", True), ("None", None),
                                        ("[1, 2]", [1, 2]), ("resnet18", "resnet18"), ("1e309", float("inf"))])
def test_values_are_typed(text, value):
    assert runner.parse_value(text) == value


def test_nan_and_infinities_are_numbers_for_the_config_to_refuse():
    assert runner.parse_value("nan") != runner.parse_value("nan")  # NaN
    assert runner.parse_value("-inf") == -float("inf")


# ------------------------------------------------------------------------ where runs write


@pytest.mark.slow
def test_papermill_run_directly_writes_a_scratch_folder_not_the_book(unchanged, tmp_path):
    """The published chapter, table and figures are not a run's default destination, even with
    a misspelt parameter (papermill only warns about it)."""
    import papermill

    before = set((ROOT / "data" / "runs").glob("quickstart-smoke-*")) if (ROOT / "data" / "runs").is_dir() else set()
    env = {k: v for k, v in os.environ.items() if k not in ("WM_OUT", "WM_PROGRESS")}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        papermill.execute_notebook(str(runner.notebook_path("quickstart")), str(tmp_path / "out.ipynb"),
                                   parameters={"profile": "smoke", "bogus": 3}, cwd=str(ROOT),
                                   progress_bar=False, kernel_name="python3")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    new = set((ROOT / "data" / "runs").glob("quickstart-smoke-*")) - before
    try:
        assert len(new) == 1, new
        (run,) = new
        assert (run / "results" / "quickstart.csv").is_file() and list((run / "figures").glob("*.png"))
    finally:
        for run in new:  # the scratch run is this test's own: leave the tree as it was
            import shutil
            shutil.rmtree(run)


@pytest.mark.slow
def test_gpu_profile_on_the_cpu_when_asked_with_progress_and_a_warning(tmp_path):
    """`--profile gpu --allow-cpu` with tiny overrides runs the gpu code paths here; its provenance
    carries the warning, and the live progress lines reach the runner's terminal."""
    out = tmp_path / "gpu"
    env = dict(os.environ, WM_PROGRESS_SECONDS="0")
    done = _wm("run", "quickstart", "--profile", "gpu", "--allow-cpu", "--out", str(out), "-p", "n_train", "512",
               "-p", "n_test", "256", "-p", "epochs", "0.5", "-p", "width", "8", "-p", "attack_epochs", "0.25",
               env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    prov = json.loads((out / "results" / "quickstart.json").read_text())
    assert prov["profile"] == "gpu" and any("without CUDA" in w for w in prov.get("warnings", []))
    nb = json.loads((out / "quickstart.ipynb").read_text())
    assert "without CUDA" in "".join(nb["cells"][0]["source"])  # the banner says so
    assert "wm: training SmallCNN: epoch 1/0.5, step" in done.stderr, done.stderr[-2000:]


@pytest.mark.slow
def test_smoke_is_silent_and_a_failed_run_keeps_its_notebook_under_a_unique_name(tmp_path):
    out = tmp_path / "failing"
    done = _wm("run", "comparison", "--profile", "smoke", "--out", str(out), "-p", "results_dir",
               str(tmp_path / "nosuch"), timeout=300)
    assert done.returncode == 1
    assert "comparison failed in cell" in done.stderr and "wm: training" not in done.stderr
    failed = list(out.glob("comparison.failed-*.ipynb"))
    assert len(failed) == 1 and str(failed[0]) in done.stderr


@pytest.mark.slow
def test_sigterm_removes_the_temporary_folders(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "wm", "run", "quickstart", "--profile", "smoke", "--out", str(out)],
                            cwd=ROOT, env=dict(os.environ, TMPDIR=str(tmp)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp.glob("wm-quickstart-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    time.sleep(4)  # the kernel has started and is running a cell
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert not list(tmp.glob("wm-*")), list(tmp.iterdir())


# ------------------------------------------------------------------------------- publishing


def test_publishing_needs_a_clean_tree(monkeypatch):
    monkeypatch.setattr(results, "source_status", lambda: " M wm/train.py\n?? wm/new.py")
    with pytest.raises(runner.UsageError, match=r"clean tree, and 2 file\(s\) differ .*wm/train.py"):
        runner.check_publishable()
    monkeypatch.setattr(results, "source_status", lambda: "")
    assert len(runner.check_publishable()) == 40  # the commit it publishes from


def test_the_published_outputs_are_left_out_of_the_clean_tree_check():
    assert {"book/*.ipynb", "book/figures", "data/results"} == set(results.PUBLISHED_PATHS)


def _fake_run(folder: Path, study="watermas") -> Path:
    (folder / "results").mkdir(parents=True)
    (folder / "figures").mkdir()
    (folder / f"{study}.ipynb").write_text("notebook")
    (folder / "results" / f"{study}.csv").write_text("table")
    (folder / "results" / f"{study}.json").write_text("sidecar")
    (folder / "figures" / f"{study}_a.png").write_text("figure")
    return folder


@pytest.fixture
def published(tmp_path, monkeypatch):
    """book/, data/results/ and book/figures/ redirected into a temporary folder."""
    book, tables = tmp_path / "book", tmp_path / "data" / "results"
    monkeypatch.setattr(runner, "BOOK", book)
    monkeypatch.setattr(results, "PUBLISHED_RESULTS", tables)
    monkeypatch.setattr(results, "PUBLISHED_FIGURES", book / "figures")
    return book, tables


def test_publish_moves_notebook_table_sidecar_and_figures_together(tmp_path, published):
    book, tables = published
    run = _fake_run(tmp_path / "run")
    assert runner.publish_run("watermas", run) == book / "watermas.ipynb"
    assert (book / "watermas.ipynb").read_text() == "notebook"
    assert (tables / "watermas.csv").read_text() == "table" and (tables / "watermas.json").read_text() == "sidecar"
    assert (book / "figures" / "watermas_a.png").read_text() == "figure"
    assert not [p for p in tmp_path.rglob(".*publish*")]  # no staged file left


def test_a_publish_that_fails_while_copying_changes_nothing(tmp_path, published, monkeypatch):
    book, tables = published
    run = _fake_run(tmp_path / "run")
    tables.mkdir(parents=True)
    (tables / "watermas.csv").write_text("old table")
    real = runner.shutil.copyfile

    def copy(src, dst):
        if str(src).endswith(".png"):
            raise OSError("disk full")
        return real(src, dst)
    monkeypatch.setattr(runner.shutil, "copyfile", copy)
    with pytest.raises(OSError, match="disk full"):
        runner.publish_run("watermas", run)
    assert (tables / "watermas.csv").read_text() == "old table"
    assert not (book / "watermas.ipynb").exists()
    assert not [p for p in tmp_path.rglob(".*publish*")]


@pytest.mark.slow
def test_tuple_parameters_reach_the_kernel_as_values_not_text(tmp_path):
    """papermill writes a tuple into the notebook as the text of its repr: the runner passes lists."""
    assert runner._for_papermill({"a": (0.01,), "b": 3}) == {"a": [0.01], "b": 3}
    out = tmp_path / "ne"
    done = _wm("run", "null_embedding", "--profile", "smoke", "--out", str(out), "-p", "pirate_lrs", "(0.02,)",
               "-p", "sweep_ns", "[4]", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    params = json.loads((out / "results" / "null_embedding.json").read_text())["parameters"]
    assert params["pirate_lrs"] == [0.02] and params["sweep_ns"] == [4]
