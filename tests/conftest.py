"""Fixtures shared by several test files: the book, built once per session."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from wm import ROOT


def toc_files() -> list[str]:
    """Every page of _toc.yml, root first, as paths without suffix (e.g. 'book/intro')."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [c["file"] for c in part["chapters"]]
    return files


@dataclass
class BookBuild:
    """One `jupyter-book build -W --keep-going` of the repository into a temporary folder."""

    returncode: int
    output: str  # the tails of stdout and stderr, for assertion messages
    html: Path  # _build/html

    def require_success(self) -> Path:
        """The HTML folder; fails the calling test, with the build's messages, if the build failed."""
        if self.returncode != 0:
            pytest.fail(f"the book build failed (exit {self.returncode}):\n{self.output}", pytrace=False)
        return self.html


@pytest.fixture(scope="session")
def book_build(tmp_path_factory) -> BookBuild:
    """The book built once for the whole session (tests/test_book.py and tests/test_browser.py)."""
    out = tmp_path_factory.mktemp("book")
    exe = Path(sys.executable).with_name("jupyter-book")
    done = subprocess.run([str(exe), "build", str(ROOT), "--path-output", str(out), "-W", "--keep-going"],
                          capture_output=True, text=True, timeout=900)
    return BookBuild(done.returncode, done.stdout[-3000:] + done.stderr[-3000:], out / "_build" / "html")
