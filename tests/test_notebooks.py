"""Every notebook in notebooks/ executes through the runner at the smoke profile.

Also: two runs with the same seed on the CPU give identical results tables.
"""

import filecmp
import json

import nbformat
import pytest

from wm import runner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Each notebook executed once into its own folder (shared by the tests below)."""
    out = {}
    for study in runner.studies():  # the comparison last: it reads the studies' tables
        folder = tmp_path_factory.mktemp(study)
        out[study] = (runner.run(study, "smoke", out=folder, quiet=True), folder)
    return out


@pytest.mark.parametrize("study", runner.studies())
def test_notebook_executes_at_smoke(smoke_runs, study):
    path, folder = smoke_runs[study]
    nb = nbformat.read(path, as_version=4)
    prov = nb.metadata["wm_provenance"]
    assert prov["profile"] == "smoke" and prov["wall_seconds"] > 0
    assert "Provenance" in nb.cells[0].source  # the banner on top
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    # the source notebook stays without outputs
    src = json.loads(runner.notebook_path(study).read_text())
    assert not any(c.get("outputs") for c in src["cells"] if c["cell_type"] == "code")
    if study != "comparison":
        table = folder / "results" / f"{study}.csv"
        assert table.is_file() and table.with_suffix(".json").is_file()
        assert list((folder / "figures").glob("*.png"))


def test_same_seed_gives_identical_tables(smoke_runs, tmp_path):
    study = "quickstart" if "quickstart" in smoke_runs else sorted(smoke_runs)[0]
    _, first = smoke_runs[study]
    runner.run(study, "smoke", out=tmp_path, quiet=True)
    a, b = first / "results" / f"{study}.csv", tmp_path / "results" / f"{study}.csv"
    assert filecmp.cmp(a, b, shallow=False), "two same-seed CPU runs gave different tables"


def test_failed_run_leaves_no_chapter(tmp_path):
    with pytest.raises(runner.UsageError, match="n_train"):
        runner.run("quickstart", "smoke", {"n_train": "0"}, out=tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("study", runner.studies())
def test_published_code_is_collapsed_or_removed(study):
    """The book leads with prose, tables and figures: every code cell is collapsed (hide-input),
    or removed where it only plots or records (remove-input), in the source and the chapter."""
    for path in (runner.notebook_path(study), runner.BOOK / f"{study}.ipynb"):
        nb = json.loads(path.read_text())
        bare = [c.get("id") for c in nb["cells"] if c["cell_type"] == "code"
                and not {"hide-input", "remove-input"} & set(c.get("metadata", {}).get("tags", []))]
        assert not bare, f"{path}: code cells shown in full: {bare}"
