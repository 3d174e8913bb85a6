"""One seaborn theme for the whole book, and figures saved beside the chapters.

Every figure is shown in its notebook and also saved as PNG in the run's figures/ folder (see
wm.results.output_dir); publishing a run copies them to book/figures/, so the comparison chapter
and readers can use the files without re-running anything.
"""

from __future__ import annotations

from pathlib import Path

from wm.results import atomic_write, output_dir


def set_theme() -> None:
    import seaborn as sns
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def figures_dir() -> Path:
    return output_dir() / "figures"


def save(fig, name: str) -> Path:
    """Save FIG as <figures_dir>/<name>.png (atomically) and return the path."""
    return atomic_write(figures_dir() / f"{name}.png", lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight"))


def adopt(path: Path, name: str) -> Path:
    """Copy a figure another run saved (PATH, e.g. a sweep run's) into this run's figures as
    <name>.png, so that publishing this run publishes it; raises FileNotFoundError if it is not there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no figure at {path}: the run that draws it did not finish")
    data = path.read_bytes()
    return atomic_write(figures_dir() / f"{name}.png", lambda tmp: Path(tmp).write_bytes(data))
