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


@pytest.fixture
def seed_runs(tmp_path):
    """A study chapter run one seed at a time (its wm.*_study.run_seed), over seeds 0 and 1 and over
    seed 1 alone at the smoke profile with the TINY overrides: seed 1's rows must agree (so the chapter
    a sweep of one-seed runs merges is the chapter one run gives); returns the two-seed table as a
    sweep's merged table is read back (through the CSV)."""
    import pandas as pd

    from wm import results
    from wm.results import Results

    def run(study, config, run_seed, **tiny):
        def table(seed, seeds):
            cfg = config.from_profile("smoke", seed=seed, seeds=seeds, **tiny)
            r = Results(study, "smoke", cfg.as_dict())
            for s in range(seed, seed + seeds):
                run_seed(cfg, s, r, "cpu")
            out = tmp_path / f"{seed}-{seeds}"
            r.save(out)
            return results.load(study, out)

        both, second = table(0, 2), table(1, 1)
        cols = ["method", "model", "experiment", "attack", "strength", "seed", "metric", "case"]
        pd.testing.assert_frame_equal(both[both.seed == 1].sort_values(cols).reset_index(drop=True),
                                      second.sort_values(cols).reset_index(drop=True))
        return both
    return run
