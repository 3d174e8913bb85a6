"""wm.config: every study's Config refuses bad values with one error naming the field, and every
knob a profile sets is a notebook parameter (so that every profile can be shrunk)."""

import ast
import dataclasses
import importlib
import importlib.util
import json

import pytest

from wm import module_name, runner
from wm.config import MAX_SEED, StudyConfig, param

STUDIES = [s for s in runner.studies() if importlib.util.find_spec(module_name(s))]  # the chapters with a Config


def _config(study):
    return importlib.import_module(module_name(study)).Config


@pytest.mark.parametrize("study", STUDIES)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), True, "many", None])
def test_every_numeric_field_refuses_non_numbers(study, value):
    """NaN, infinities, booleans and strings, for every int and float field of every Config."""
    config = _config(study)
    for f in dataclasses.fields(config):
        default = getattr(config.from_profile("smoke"), f.name)
        if f.name == "profile" or isinstance(default, (str, bool, tuple)) or default is None:
            continue
        if value is None and "None" in str(f.type):
            continue  # an optional field: None is its "off"
        cfg = config.from_profile("smoke")
        object.__setattr__(cfg, f.name, value)  # as if set: None is "the default" to from_profile
        with pytest.raises(ValueError, match=rf"^{f.name}="):
            cfg.validate()


@pytest.mark.parametrize("study", STUDIES)
def test_seeds_and_epochs_have_bounds(study):
    config = _config(study)
    names = {f.name for f in dataclasses.fields(config)}
    bad = {"seed": [-1, MAX_SEED + 1, 10**30, 1.5], "epochs": [0, -1, 1e9, 1e309], "seeds": [0, 10**9],
           "n_train": [0, 10**9], "batch_size": [1, 10**9]}
    for name, values in bad.items():
        if name not in names:
            continue
        for v in values:
            with pytest.raises(ValueError, match=rf"^{name}="):
                config.from_profile("smoke", **{name: v})


@pytest.mark.parametrize("study,overrides,field", [
    ("null_embedding", dict(n_train=1), "n_train"),        # the split that hung train.fit
    ("null_embedding", dict(n_verify=600, n_test=500), "n_verify"),
    ("watermas", dict(large_n_train=2000), "large_n_train"),
    ("watermas", dict(sharpness_samples=400), "sharpness_samples"),
    ("image_processing", dict(n_owner=8, batch_size=16), "n_owner"),
    ("image_processing", dict(batch_size=15), "batch_size"),
    ("image_processing", dict(size=20), "size"),
    ("attack_suite", dict(n_train=50000, n_attacker=20000), "n_attacker"),
    ("attack_suite", dict(methods=("watermas", "watermas")), "methods"),
    ("quickstart", dict(n_train=100, batch_size=128), "n_train"),
])
def test_constraints_between_fields(study, overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}="):
        _config(study).from_profile("smoke", **overrides)


def test_tuples_are_typed_non_empty_and_lists_become_tuples():
    ne = _config("null_embedding")
    assert ne.from_profile("smoke", pirate_lrs=[0.01, 0.1]).pirate_lrs == (0.01, 0.1)
    for bad in [(), (0.01, float("nan")), (0.01, True), "0.01", (0.01, -1)]:
        with pytest.raises(ValueError, match="^pirate_lrs="):
            ne.from_profile("smoke", pirate_lrs=bad)
    with pytest.raises(ValueError, match="^sweep_ns="):
        ne.from_profile("smoke", sweep_ns=(4.5,))
    assert _config("image_processing").from_profile("smoke", sm_losses=()).sm_losses == ()  # may be empty


def test_a_declared_field_is_checked_by_its_annotation_and_bounds():
    @dataclasses.dataclass
    class C(StudyConfig):
        profile: str = "cpu"
        rate: float = param(0.5, gt=0, le=1)
        """A rate."""
        steps: int | None = param(None, ge=1)
        """Optional steps."""
        names: tuple = param(("a",), choices=("a", "b"))
        """Names."""

    assert C.from_profile("cpu", rate=1, steps=3, names=["b", "a"]).names == ("b", "a")
    for kw, msg in [(dict(rate=0), "rate=0 is invalid: a finite number > 0 and ≤ 1"),
                    (dict(steps=0.5), "steps=0.5 is invalid: an integer ≥ 1 or None"),
                    (dict(names=("c",)), "names=('c',) is invalid: a non-empty tuple of values each one of a, b")]:
        with pytest.raises(ValueError) as err:
            C.from_profile("cpu", **kw)
        assert str(err.value) == msg


# ------------------------------------------------------------- every profile knob is a parameter


def _parameters_and_call(study):
    """The notebook's parameter names, and the keyword names its Config.from_profile call passes."""
    path = runner.notebook_path(study)
    params = set(runner.notebook_parameters(path))
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"]) if cell["cell_type"] == "code" else ""
        for node in ast.walk(ast.parse(source)) if "from_profile(profile" in source else ():
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_profile":
                assert all(isinstance(k.value, ast.Name) and k.value.id == k.arg for k in node.keywords)
                return params, {k.arg for k in node.keywords}
    raise AssertionError(f"{study}: no Config.from_profile(profile, ...) call")


@pytest.mark.parametrize("study", STUDIES)
def test_every_profile_knob_is_a_notebook_parameter_passed_to_the_config(study):
    config = _config(study)
    knobs = set().union(*(set(d) for d in config.PROFILE_DEFAULTS.values()))
    params, passed = _parameters_and_call(study)
    assert knobs <= params, f"{study}: profile knobs that are not notebook parameters: {sorted(knobs - params)}"
    assert params - {"profile"} == passed, f"{study}: parameters not passed on: {sorted(params - {'profile'} - passed)}"
    assert passed <= {f.name for f in dataclasses.fields(config)}


def test_the_chapter_list_comes_from_the_toc_and_covers_every_notebook():
    """runner.studies() reads _toc.yml: a notebook left out of the book, or a chapter without its
    notebook, would silently drop out of `python -m wm book`."""
    from wm import STUDIES as TABLE_STUDIES
    from wm.results import EXAMPLE_STUDY
    on_disk = {p.stem for p in runner.NOTEBOOKS.glob("*.ipynb")}
    assert set(runner.studies()) == on_disk
    assert set(TABLE_STUDIES) | {EXAMPLE_STUDY} == set(STUDIES)  # every chapter with a Config writes a table
    assert runner.studies()[-1] == "comparison"  # it reads the others' tables


@pytest.mark.parametrize("study", runner.studies())
def test_papermill_reads_every_parameter_line(study, caplog):
    """papermill skips (with a warning) a parameter line holding more than one '=', e.g. one whose
    comment says "std = k × σ": such a parameter would vanish from `papermill --help-notebook`."""
    import logging

    import papermill
    with caplog.at_level(logging.WARNING, logger="papermill"):
        found = papermill.inspect_notebook(str(runner.notebook_path(study)))
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert "profile" in found
