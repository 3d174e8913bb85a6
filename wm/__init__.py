"""wm: the library behind wm-study, a reproducible study of neural-network watermarking.

This file stays import-light (standard library only) because `python3 -m wm` must start on a
bare interpreter, create the project's virtual environment and only then import torch.
"""

from pathlib import Path

__version__ = "0.1.0"

ROOT = Path(__file__).resolve().parent.parent
"""The repository root: notebooks/, book/ and data/ are found relative to it."""

STUDIES = ("image_processing", "null_embedding", "watermas", "nulls", "tuning", "attack_suite")
"""The values of the results table's `study` column: the three papers' studies, the null populations (wm/nulls.py), held-out tuning (wm/tuning.py) and the attack
suite that runs one threat-model grid across every registered method (wm/suite.py)."""

MODULES = {"attack_suite": "suite"}
"""A notebook whose module is named otherwise: notebooks/attack_suite.ipynb runs wm/suite.py."""


def module_name(notebook: str) -> str:
    """The wm module behind NOTEBOOK (it may not exist: the comparison has none)."""
    return f"wm.{MODULES.get(notebook, notebook)}"


PROFILES = ("smoke", "cpu", "gpu")
"""Concrete profiles; `auto` resolves to `gpu` when CUDA is available, else `cpu`."""
