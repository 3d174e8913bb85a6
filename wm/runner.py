"""Execute a study notebook with papermill, after checking everything that can be checked first.

The checks (study name, profile, every `-p` name against the notebook's `parameters` cell, the
destination folder) use only the standard library, so a wrong command fails in a fraction of a
second with one line and exit code 2, writes nothing, and does not even need the environment to
exist. Values are then checked by the study's own `Config.from_profile` before papermill starts a
kernel.

A run writes into its own folder: `--out DIR`, or by default a new scratch folder
`data/runs/<study>-<profile>-<time>/` (git-ignored) holding the executed notebook, `results/` and
`figures/`. Nothing under `book/` or `data/results/` changes unless the run is published
(`--publish`): then, from a clean tree, the finished run's notebook, table, sidecar and figures
are moved into place together (`publish`). A failed run keeps its half-executed notebook in its
own folder under a unique name; the kernel's temporary folder is removed on failure and on SIGTERM.
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
import warnings
from pathlib import Path
from typing import Any

from wm import PROFILES, ROOT, module_name

NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"


class UsageError(Exception):
    """A bad command line: reported as one line, exit code 2, nothing written."""


# ---------------------------------------------------------------------------------------------
# What a notebook accepts (standard library only)
# ---------------------------------------------------------------------------------------------

def chapters() -> list[str]:
    """The book's chapters in _toc.yml order (root first), by file stem."""
    import yaml
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    out = [Path(toc["root"]).stem]
    for part in toc.get("parts", []):
        out += [Path(c["file"]).stem for c in part.get("chapters", [])]
    return out


def studies() -> list[str]:
    """The executable chapters: those of _toc.yml with a notebook in notebooks/, in the order to
    execute them. A notebook without a wm module of its own (the comparison) only reads the
    others' tables, so it comes last."""
    names = [c for c in chapters() if (NOTEBOOKS / f"{c}.ipynb").is_file()]
    return sorted(names, key=lambda s: importlib.util.find_spec(module_name(s)) is None)


def notebook_path(study: str) -> Path:
    """notebooks/STUDY.ipynb for a study named exactly as listed (no paths, no suffix)."""
    if study not in studies():  # a name, never a path: '../notebooks/watermas' is not a study
        known = ", ".join(studies()) or "none"
        raise UsageError(f"unknown study {study!r}: the notebooks are {known}")
    return NOTEBOOKS / f"{study}.ipynb"


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
    """A command-line value as Python: numbers, booleans, None, lists; anything else a string.

    `nan`, `inf` and `-inf` become floats, so that the Config refuses them as non-finite numbers
    (naming the field) rather than as strings."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if lowered in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
        return float(lowered)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_out(out: Path | None, option: str = "--out") -> None:
    """A destination folder that exists or can be created, and is not the published book."""
    if out is None:
        return
    out = Path(out)
    where = out.resolve()
    for published in (BOOK, ROOT / "data" / "results"):
        if where == published.resolve() or published.resolve() in where.parents:
            raise UsageError(f"{option} {out} lies in the published {published.relative_to(ROOT)}/: "
                             "publish with --publish instead")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} {out} is a file, not a folder")
    parent = where
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {out} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {out} cannot be created: {parent} is not writable")


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
    if importlib.util.find_spec(module_name(study)) is None:
        return  # a notebook without a module of its own (the comparison) validates in its first cell
    config = getattr(importlib.import_module(module_name(study)), "Config", None)
    if config is None:
        return
    names = {f.name for f in dataclasses.fields(config)}
    try:
        with warnings.catch_warnings():  # the gpu-without-CUDA warning is the runner's to give
            warnings.simplefilter("ignore")
            config.from_profile(profile, **{k: v for k, v in values.items() if k in names})
    except (ValueError, TypeError) as err:
        raise UsageError(f"{study}: {err}") from None


def check_device(profile: str, allow_cpu: bool) -> None:
    """The gpu profile on a machine without CUDA only when asked (`--allow-cpu`)."""
    from wm.results import gpu_without_cuda

    if gpu_without_cuda(profile) and not allow_cpu:
        raise UsageError("--profile gpu needs CUDA, which this machine lacks: add --allow-cpu to run "
                         "the gpu profile's code paths on the CPU (the provenance then says so)")


def check_publishable() -> str:
    """The commit a published chapter is executed from; UsageError unless the sources are clean."""
    from wm.results import _git, source_status

    commit = _git("rev-parse", "HEAD")
    if not commit:
        raise UsageError("publishing needs a git checkout (the chapter records the commit it ran)")
    changed = source_status().splitlines()
    if changed:
        raise UsageError(f"publishing needs a clean tree, and {len(changed)} file(s) differ from the "
                         f"commit (first: {changed[0].strip()}): commit or stash them, or run without --publish")
    return commit


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


def _for_papermill(values: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists: papermill writes a tuple into the notebook as the text of its repr (a
    string), a list as a list; the Configs take lists for tuple fields."""
    def plain(v):
        return [plain(e) for e in v] if isinstance(v, (tuple, list)) else v
    return {k: plain(v) for k, v in values.items()}


def _banner(prov: dict[str, Any], study: str) -> str:
    minutes, seconds = divmod(round(prov["wall_seconds"]), 60)
    dirty = " (with uncommitted changes)" if prov["dirty"] else ""
    params = ", ".join(f"`{k}={v!r}`" for k, v in prov["parameters"].items()) or "none"
    warning = "".join(f"- **warning** {w}\n" for w in prov.get("warnings", []))
    return (
        "```{admonition} Provenance\n:class: note\n"
        f"This chapter was executed by `python -m wm run {study} --profile {prov['profile']}`.\n\n"
        f"- **profile** {prov['profile']} · **device** {prov['device']}\n"
        f"- **commit** `{prov['commit'][:12]}`{dirty} · **date** {prov['started']}\n"
        f"- **wall time** {minutes} min {seconds:02d} s · **parameters** {params}\n"
        f"- **versions** " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()) + "\n"
        + warning + "```\n"
    )


def run(study: str, profile: str = "auto", params: dict[str, str] | None = None,
        out: Path | None = None, quiet: bool = False, publish: bool = False,
        allow_cpu: bool = False) -> Path:
    """Execute notebooks/STUDY.ipynb into its own folder and return the executed notebook's path.

    OUT is that folder (default: a new data/runs/<study>-<profile>-<time>/). With PUBLISH (no OUT) the
    finished run is then moved into book/ and data/results/ (`publish`), from a clean tree only.
    """
    from wm.config import resolve_profile
    from wm.results import scratch_folder

    if publish and out is not None:
        raise UsageError("--publish writes into book/ and data/results/: leave out --out")
    check_out(out)
    src, values = check_request(study, profile, params or {})
    commit = check_publishable() if publish else None
    profile = resolve_profile(profile)
    check_device(profile, allow_cpu)
    check_values(study, profile, values)
    from wm import data
    try:  # a partial $WM_DATA copy is named now, not after the kernel has started
        data.check_wm_data()
    except data.DataError as err:
        raise RuntimeError(str(err)) from None

    import nbformat
    import papermill

    from wm.results import atomic_write, gpu_without_cuda, provenance

    out = Path(out) if out is not None else scratch_folder(f"{study}-{profile}")
    prov = dict(provenance(values), profile=profile, study=study)
    if gpu_without_cuda(profile):
        from wm.config import GPU_WITHOUT_CUDA
        prov["warnings"] = [GPU_WITHOUT_CUDA]
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"wm-{study}-") as tmp, _environ(
            # the kernel inherits these: wm.results and wm.plots write under WM_OUT, wm.progress
            # prints live lines on the runner's terminal except at smoke
            WM_OUT=str(out), WM_PROGRESS="0" if profile == "smoke" or quiet else "1",
            JUPYTER_PATH=os.pathsep.join(p for p in (tmp, os.environ.get("JUPYTER_PATH")) if p)):
        executed = Path(tmp) / f"{study}.ipynb"
        kernel = _kernel_for_this_interpreter(Path(tmp))
        try:
            papermill.execute_notebook(
                str(src), str(executed), parameters={"profile": profile, **_for_papermill(values)},
                kernel_name=kernel, cwd=str(ROOT), progress_bar=not quiet,
                log_output=False, execution_timeout=None, request_save_on_cell_execute=False)
        except papermill.PapermillExecutionError as err:
            # in the run's own folder, under a name no other run takes
            failed = out / f"{study}.failed-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.ipynb"
            if executed.exists():
                shutil.copy(executed, failed)
            raise RuntimeError(f"{study} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                               f"(the executed notebook is kept at {failed})") from None
        prov["wall_seconds"] = time.perf_counter() - started
        nb = nbformat.read(executed, as_version=4)
        # readers open the chapter with their own Python: keep the source's kernelspec
        nb.metadata["kernelspec"] = nbformat.read(src, as_version=4).metadata["kernelspec"]
        nb.metadata["wm_provenance"] = prov
        for cell in nb.cells:  # the book collapses code (the sources tag their cells): these too
            tags = cell.metadata.setdefault("tags", [])
            if "injected-parameters" in tags and "hide-input" not in tags:
                tags.append("hide-input")
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(_banner(prov, study)))
        atomic_write(out / f"{study}.ipynb", lambda tmp: nbformat.write(nb, tmp))
    if publish:
        return publish_run(study, out, commit)
    return out / f"{study}.ipynb"


def publish_run(study: str, run_dir: Path, commit: str | None = None) -> Path:
    """Move a finished run's notebook, table, sidecar and figures into book/ and data/results/.

    All files are first copied beside their destinations under temporary names, then renamed
    into place one after the other: a failure while copying changes nothing published. COMMIT,
    when given, is the commit the run started from: publishing is refused if the tree moved on
    or became dirty while it ran.
    """
    from wm.results import PUBLISHED_FIGURES, PUBLISHED_RESULTS

    if commit is not None and check_publishable() != commit:
        raise RuntimeError(f"HEAD moved while {study} ran: not published (the run is kept in {run_dir})")
    moves = [(run_dir / f"{study}.ipynb", BOOK / f"{study}.ipynb")]
    moves += [(run_dir / "results" / f"{study}{ext}", PUBLISHED_RESULTS / f"{study}{ext}") for ext in (".csv", ".json")
              if (run_dir / "results" / f"{study}{ext}").is_file()]
    moves += [(p, PUBLISHED_FIGURES / p.name) for p in sorted((run_dir / "figures").glob("*.png"))]
    staged = []
    try:
        for src, dest in moves:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.publish-{os.getpid()}")
            shutil.copyfile(src, tmp)
            staged.append((tmp, dest))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, dest in staged:
        os.replace(tmp, dest)
    return BOOK / f"{study}.ipynb"
