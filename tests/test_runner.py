"""The runner's command line: bad requests fail early, with one line, exit 2, nothing written."""

import subprocess
import sys

import pytest

from wm import ROOT, runner


def _wm(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "wm", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["run", "nosuch"], "unknown study 'nosuch'"),
    (["run", "quickstart", "--profile", "turbo"], "unknown profile 'turbo'"),
    (["run", "quickstart", "-p", "nosuch", "1"], "unknown parameter 'nosuch'"),
    (["run", "quickstart", "-p", "epochs", "-1"], "epochs=-1"),
    (["run", "quickstart", "-p", "n_train", "'many'"], "n_train='many'"),
    (["run", "quickstart", "-p", "profile", "gpu"], "--profile"),
    (["book", "--profile", "turbo"], "unknown profile"),
])
def test_usage_errors_are_one_line_exit_2_and_write_nothing(tmp_path, args, needle):
    out = tmp_path / "out"
    done = _wm(*args, "--out", str(out)) if args[0] == "run" else _wm(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert not out.exists()


def test_parameters_cell_is_read():
    params = runner.notebook_parameters(runner.notebook_path("quickstart"))
    assert params["profile"] == "auto" and "seed" in params and params["seed"] is None


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), ("true", True), ("None", None),
                                        ("[1, 2]", [1, 2]), ("resnet18", "resnet18")])
def test_values_are_typed(text, value):
    assert runner.parse_value(text) == value


def test_publishing_runs_write_data_results(tmp_path):
    assert runner.results_dir_for(runner.BOOK) == ROOT / "data" / "results"
    assert runner.results_dir_for(tmp_path) == tmp_path / "results"
