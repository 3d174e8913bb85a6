"""The book builds with warnings as errors, from the executed notebooks committed in book/."""

import pytest

from conftest import toc_files
from wm import ROOT

pytestmark = pytest.mark.slow


def test_every_toc_entry_exists_once():
    for f in toc_files():
        found = [p for p in (ROOT / f"{f}.md", ROOT / f"{f}.ipynb") if p.exists()]
        assert len(found) == 1, f"{f}: expected exactly one of .md/.ipynb, found {found}"


def test_book_builds_without_warnings(book_build):
    assert book_build.returncode == 0, book_build.output
    html = book_build.html
    assert (html / "index.html").is_file()
    for f in toc_files():
        assert (html / f"{f}.html").is_file(), f
    # the bibliography resolved: the intro lists the references it cites
    intro = (html / "book" / "intro.html").read_text()
    assert "Piracy" in intro and "WaterMAS" in intro
