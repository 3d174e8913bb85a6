"""Set-up files agree with each other: pins, conda environment, CI, README commands."""

import re

import yaml

from wm import ROOT


def _lock():
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    return {l.strip() for l in lines if l.strip() and not l.startswith("#")}


def test_lock_is_exact_pins():
    for line in _lock():
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", line), line
    names = {l.split("==")[0].lower() for l in _lock()}
    assert {"torch", "torchvision", "papermill", "jupyter-book", "scikit-image"} <= names
    assert "torch==2.14.1" in _lock() and "torchvision==0.29.1" in _lock()


def test_environment_yml_has_the_same_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) == _lock()


def test_pyproject_requirements_are_pinned_in_the_lock():
    import tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {l.split("==")[0].lower().replace("_", "-") for l in _lock()}
    for dep in deps:
        name = re.split(r"[<>=!~ ]", dep)[0].lower().replace("_", "-")
        assert name in names, dep


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m wm test" in readme and "python3 -m wm book" in readme
    commands = [l for l in ci.splitlines() if l.strip() and not l.startswith("#")
                and not l.startswith(("set ", "cd "))]
    assert commands == ["exec python3 -m wm test"]
