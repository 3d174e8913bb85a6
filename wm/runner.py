"""Execute a study notebook with papermill, after checking everything that can be checked first.

The checks (study name, profile, every `-p` name against the notebook's `parameters` cell) use
only the standard library, so a wrong command fails in a fraction of a second with one line and
exit code 2, writes nothing, and does not even need the environment to exist. Values are then
checked by the study's own `Config.from_profile` before papermill starts a kernel.

A run executes into a temporary folder and moves the finished notebook into place: a failed or
killed run never leaves a half-executed chapter in `book/`.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wm import PROFILES, ROOT

NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"


class UsageError(Exception):
    """A bad command line: reported as one line, exit code 2, nothing written."""


# ---------------------------------------------------------------------------------------------
# What a notebook accepts (standard library only)
# ---------------------------------------------------------------------------------------------

def studies() -> list[str]:
    """The notebooks in notebooks/, by name, in the order to execute them: the comparison reads
    the studies' tables, so it comes last."""
    return sorted((p.stem for p in NOTEBOOKS.glob("*.ipynb")), key=lambda s: (s == "comparison", s))


def notebook_path(study: str) -> Path:
    path = NOTEBOOKS / f"{study}.ipynb"
    if not path.is_file():
        known = ", ".join(studies()) or "none"
        raise UsageError(f"unknown study {study!r}: the notebooks are {known}")
    return path


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Names and default values of the notebook's cell tagged `parameters`."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            params = {}
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                        and isinstance(node.targets[0], ast.Name):
                    params[node.targets[0].id] = ast.literal_eval(node.value)
            return params
    raise UsageError(f"{path.name} has no cell tagged 'parameters'")


def parse_value(text: str) -> Any:
    """A command-line value as Python: numbers, booleans, None, lists; anything else a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_request(study: str, profile: str, params: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    """Validate a run request before anything is written; return the notebook and typed values."""
    path = notebook_path(study)
    if profile not in (*PROFILES, "auto"):
        raise UsageError(f"unknown profile {profile!r}: choose from {', '.join((*PROFILES, 'auto'))}")
    accepted = notebook_parameters(path)
    if "profile" not in accepted:
        raise UsageError(f"{path.name} has no 'profile' parameter")
    for name in params:
        if name == "profile":
            raise UsageError("set the profile with --profile, not -p profile")
        if name not in accepted:
            raise UsageError(f"unknown parameter {name!r} for {study}: it accepts "
                             + ", ".join(sorted(n for n in accepted if n != "profile")))
    return path, {name: parse_value(value) for name, value in params.items()}


# ---------------------------------------------------------------------------------------------
# Execution (inside the environment)
# ---------------------------------------------------------------------------------------------

def check_values(study: str, profile: str, values: dict[str, Any]) -> None:
    """Let the study's Config reject bad values (one ValueError naming the field) before a kernel starts."""
    if importlib.util.find_spec(f"wm.{study}") is None:
        return  # a notebook without a module of its own (the comparison) validates in its first cell
    config = getattr(importlib.import_module(f"wm.{study}"), "Config", None)
    if config is None:
        return
    names = {f.name for f in dataclasses.fields(config)}
    try:
        config.from_profile(profile, **{k: v for k, v in values.items() if k in names})
    except (ValueError, TypeError) as err:
        raise UsageError(f"{study}: {err}") from None


def results_dir_for(out: Path) -> Path:
    """Publishing runs (into book/) write data/results/; any other run writes OUT/results/.

    Figures always go to OUT/figures/ (book/figures/ for publishing runs).
    """
    return ROOT / "data" / "results" if out.resolve() == BOOK.resolve() else out / "results"


def _kernel_for_this_interpreter(folder: Path) -> str:
    """Register, in FOLDER, a kernelspec that runs this very interpreter; return its name.

    The stock `python3` kernelspec is looked up on Jupyter's search path, where a user-level
    one (~/.local/share/jupyter) would win and could run another Python without `wm` or with
    other versions. FOLDER goes first on that path through JUPYTER_PATH (see `run`).
    """
    spec = folder / "kernels" / "wm-python"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (wm)", "language": "python"}))
    return "wm-python"


@contextlib.contextmanager
def _environ(**values: str):
    """Set environment variables for the kernel papermill starts, and restore them after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _banner(prov: dict[str, Any], study: str) -> str:
    minutes, seconds = divmod(round(prov["wall_seconds"]), 60)
    dirty = " (with uncommitted changes)" if prov["dirty"] else ""
    params = ", ".join(f"`{k}={v!r}`" for k, v in prov["parameters"].items()) or "none"
    return (
        "```{admonition} Provenance\n:class: note\n"
        f"This chapter was executed by `python -m wm run {study} --profile {prov['profile']}`.\n\n"
        f"- **profile** {prov['profile']} · **device** {prov['device']}\n"
        f"- **commit** `{prov['commit'][:12]}`{dirty} · **date** {prov['started']}\n"
        f"- **wall time** {minutes} min {seconds:02d} s · **parameters** {params}\n"
        f"- **versions** " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()) + "\n"
        "```\n"
    )


def run(study: str, profile: str = "auto", params: dict[str, str] | None = None,
        out: Path | None = None, quiet: bool = False) -> Path:
    """Execute notebooks/STUDY.ipynb and return the executed notebook's path."""
    from wm.config import resolve_profile

    src, values = check_request(study, profile, params or {})
    profile = resolve_profile(profile)
    check_values(study, profile, values)

    import nbformat
    import papermill

    from wm.results import provenance

    out = Path(out) if out is not None else BOOK
    prov = dict(provenance(values), profile=profile, study=study)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"wm-{study}-") as tmp, _environ(
            # the kernel inherits these: wm.results and wm.plots read the first two
            WM_RESULTS_DIR=str(results_dir_for(out)), WM_FIGURES_DIR=str(out / "figures"),
            JUPYTER_PATH=os.pathsep.join(p for p in (tmp, os.environ.get("JUPYTER_PATH")) if p)):
        executed = Path(tmp) / f"{study}.ipynb"
        kernel = _kernel_for_this_interpreter(Path(tmp))
        try:
            papermill.execute_notebook(
                str(src), str(executed), parameters={"profile": profile, **values},
                kernel_name=kernel, cwd=str(ROOT), progress_bar=not quiet,
                log_output=False, execution_timeout=None, request_save_on_cell_execute=False)
        except papermill.PapermillExecutionError as err:
            failed = Path(tempfile.gettempdir()) / f"wm-{study}-failed.ipynb"
            if executed.exists():
                shutil.copy(executed, failed)
            raise RuntimeError(f"{study} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                               f"(the executed notebook is kept at {failed})") from None
        prov["wall_seconds"] = time.perf_counter() - started
        nb = nbformat.read(executed, as_version=4)
        # readers open the chapter with their own Python: keep the source's kernelspec
        nb.metadata["kernelspec"] = nbformat.read(src, as_version=4).metadata["kernelspec"]
        nb.metadata["wm_provenance"] = prov
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(_banner(prov, study)))
        out.mkdir(parents=True, exist_ok=True)
        staged = out / f".{study}.ipynb.tmp"
        nbformat.write(nb, staged)
        os.replace(staged, out / f"{study}.ipynb")
    return out / f"{study}.ipynb"
