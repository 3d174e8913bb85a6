"""The book builds with warnings as errors, from the executed notebooks committed in book/."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wm import ROOT

pytestmark = pytest.mark.slow


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [c["file"] for c in part["chapters"]]
    return files


def test_every_toc_entry_exists_once():
    for f in _toc_files():
        found = [p for p in (ROOT / f"{f}.md", ROOT / f"{f}.ipynb") if p.exists()]
        assert len(found) == 1, f"{f}: expected exactly one of .md/.ipynb, found {found}"


def test_book_builds_without_warnings(tmp_path):
    exe = Path(sys.executable).with_name("jupyter-book")
    done = subprocess.run([str(exe), "build", str(ROOT), "--path-output", str(tmp_path), "-W", "--keep-going"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    html = tmp_path / "_build" / "html"
    assert (html / "index.html").is_file()
    for f in _toc_files():
        assert (html / f"{f}.html").is_file(), f
    # the bibliography resolved: the intro lists the references it cites
    intro = (html / "book" / "intro.html").read_text()
    assert "Piracy" in intro and "WaterMAS" in intro
