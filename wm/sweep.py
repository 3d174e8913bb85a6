"""Parameter sweeps: `python -m wm sweep STUDY --profile P --grid NAME=V1,V2 ...`.

A sweep runs one study over the Cartesian product of its `--grid` values, each point an ordinary
`python -m wm run` in a child process, on local workers or on an existing Dask cluster
(`--scheduler tcp://host:8786`, wm.sweep_dask). The sweep folder (default data/sweeps/<study>-<profile>/) holds

    runs/<key>/            one run: its executed notebook, results/<study>.csv, figures, run.log
    runs/<key>/done.json   written last and atomically: the run is finished iff this file exists
    <study>.csv            every finished run's rows, with param_<name> columns and a `run` column
    <study>.json           the sweep's grid, code version and which runs are finished

A run's key is a short SHA-256 over (study, profile, parameters, source hash, CPU threads per run,
device), so a rerun skips what is finished, redoes what was killed mid-way (a folder without
done.json), and an edit of the code, committed or not, starts fresh runs instead of mixing old
numbers with new ones. The source hash covers wm/ and the study's notebook, not the commit: a
commit that touches neither (prose, tests, published tables) keeps the cache, which is what lets a
long build (the null populations) go on across sessions. The thread count and the device are in the key because they change CPU
results at float level: a local sweep and a Dask sweep agree row for row where they share keys,
and otherwise live under different keys. The merged table only ever holds the current grid's keys.

Each run gets `--threads` CPU threads (OMP_NUM_THREADS): by default this machine's cores divided
by `--workers` locally, so that workers × threads never exceed the cores (unless
`--oversubscribe`), and 1 on Dask (whose workers are sized where the cluster is started).

Like runner.py, this module imports only the standard library at the top: the command line is
checked (`check`) before the environment exists. pandas, tqdm and dask are imported where used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from wm import ROOT, runner
from wm.runner import UsageError


class RunFailed(Exception):
    """One run of the grid failed; the sweep goes on with the others and exits 1 at the end."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One point of the grid."""

    key: str
    """Short SHA-256 of (study, profile, parameters, code version, threads, device): the run's folder name."""
    grid: dict[str, Any]
    """This point's grid values, typed (they become the table's param_<name> columns)."""
    args: dict[str, str]
    """Every parameter as command-line text, grid and fixed: what `python -m wm run -p` gets."""


@dataclasses.dataclass
class Sweep:
    """A checked sweep request and the runs it expands to."""

    study: str
    profile: str
    """Concrete (auto resolved where the sweep starts, so every worker runs the same profile)."""
    grid: dict[str, list[str]]
    """NAME -> values as typed on the command line, in command-line order."""
    fixed: dict[str, str]
    """`-p NAME VALUE` parameters, the same for every run."""
    out: Path
    code: str
    """Code version: HEAD's commit + a hash of the wm/ sources and the notebook (see code_version)."""
    runs: list[Run]
    threads: int = 1
    """CPU threads of each run (OMP_NUM_THREADS of its process)."""
    device: str = ""
    """Where the runs compute (see device_kind): a Dask worker elsewhere refuses a run keyed otherwise."""
    allow_cpu: bool = False
    """Pass --allow-cpu to each run (the gpu profile on a machine without CUDA)."""

    def folder(self, run: Run) -> Path:
        return self.out / "runs" / run.key

    def done(self, run: Run) -> bool:
        return (self.folder(run) / "done.json").is_file()


# ---------------------------------------------------------------------------------------------
# The request (standard library only)
# ---------------------------------------------------------------------------------------------

def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`["seed=0,1", "lr=0.1"]` -> {"seed": ["0", "1"], "lr": ["0.1"]}; UsageError if malformed."""
    grid: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--grid {item!r} must look like NAME=V1,V2")
        texts = [v.strip() for v in values.split(",")]
        if not values.strip() or any(not t for t in texts):
            raise UsageError(f"--grid {item!r} has an empty value: give NAME=V1,V2")
        if name in grid:
            raise UsageError(f"--grid {name} is given twice: list all its values in one --grid")
        grid[name] = texts
    return grid


SCHEMES = ("tcp", "tls", "ucx", "ws", "wss")


def check_scheduler(address: str) -> None:
    """A Dask scheduler address such as tcp://host:8786 (the form only: reaching it comes later)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in SCHEMES or not parts.hostname or port is None \
            or parts.path not in ("", "/"):
        raise UsageError(f"--scheduler {address!r} is not a Dask scheduler address: give "
                         f"SCHEME://HOST:PORT with SCHEME one of {', '.join(SCHEMES)}, e.g. tcp://host:8786")


def default_threads(workers: int, scheduler: str | None) -> int:
    import os
    return 1 if scheduler else max(1, (os.cpu_count() or 1) // workers)


def check(study: str, profile: str, grid_items: list[str], fixed: dict[str, str],
          workers: int | None, scheduler: str | None, threads: int | None = None,
          oversubscribe: bool = False, out: Path | None = None) -> dict[str, list[str]]:
    """Everything that can be checked before the environment exists; returns the parsed grid."""
    import os
    grid = parse_grid(grid_items)
    if not grid:
        raise UsageError("a sweep needs at least one --grid NAME=V1,V2")
    if "profile" in grid:
        raise UsageError("the profile is not a grid parameter: run one sweep per --profile")
    both = sorted(set(grid) & set(fixed))
    if both:
        raise UsageError(f"{both[0]} is both swept (--grid) and fixed (-p): choose one")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers} must be at least 1")
    if workers is not None and scheduler:
        raise UsageError("--workers is for local runs: a Dask cluster's size is set where it is started")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads} must be at least 1")
    cores = os.cpu_count() or 1
    if not scheduler and not oversubscribe:
        total = (workers or 1) * (threads or default_threads(workers or 1, None))
        if total > cores:
            raise UsageError(f"--workers {workers or 1} x --threads {total // (workers or 1)} = {total} threads on "
                             f"{cores} cores would slow every run down: use fewer, or --oversubscribe")
    if scheduler:
        check_scheduler(scheduler)
    runner.check_out(out)
    # names (and the profile, the study) checked like a single run's; all values are parsed here
    runner.check_request(study, profile, {**fixed, **{name: texts[0] for name, texts in grid.items()}})
    return grid


def code_version(study: str) -> str:
    """`<HEAD commit>+<hash of wm/**/*.py and notebooks/STUDY.ipynb as they are on disk>`.

    The file hash makes uncommitted edits count: a run keyed on it is never reused after the code
    that made it changed. Standard library only (hashlib, and git through subprocess).
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"{commit[:12]}+{source_hash(study)}"


def source_hash(study: str) -> str:
    digest = hashlib.sha256()
    files = sorted((ROOT / "wm").rglob("*.py")) + [runner.notebook_path(study)]
    for path in files:  # the relative path too: a renamed module is a different program
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def run_key(study: str, profile: str, values: dict[str, Any], code: str, threads: int, device: str) -> str:
    """CODE is a code_version: only its source hash is keyed (the commit is provenance)."""
    blob = json.dumps({"study": study, "profile": profile, "parameters": sorted(values.items()),
                       "code": code.split("+", 1)[-1], "threads": threads, "device": device}, default=repr, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def device_kind() -> str:
    """The GPU's name where CUDA is available, else the CPU's model (no thread count: that is keyed apart)."""
    import torch

    from wm.results import cpu_model
    return f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else f"cpu:{cpu_model()}"


def plan(study: str, profile: str, grid: dict[str, list[str]], fixed: dict[str, str],
         out: Path | None = None, workers: int = 1, threads: int | None = None,
         scheduler: str | None = None, allow_cpu: bool = False) -> Sweep:
    """Expand the grid into keyed runs and let the study's Config check every value (inside the
    environment: resolving `auto` needs torch). Raises UsageError before anything is written."""
    from wm.config import resolve_profile

    profile = resolve_profile(profile)
    runner.check_device(profile, allow_cpu)
    threads = threads or default_threads(workers, scheduler)
    device = device_kind()
    out = Path(out) if out is not None else ROOT / "data" / "sweeps" / f"{study}-{profile}"
    code = code_version(study)
    runs = []
    for combo in itertools.product(*grid.values()):
        texts = dict(zip(grid, combo))
        args = {**fixed, **texts}
        _, values = runner.check_request(study, profile, args)
        runner.check_values(study, profile, values)
        # typed values in the table's param_ columns; a list or the like stays as typed text
        typed = {n: values[n] if isinstance(values[n], (bool, int, float, str, type(None))) else t
                 for n, t in texts.items()}
        runs.append(Run(run_key(study, profile, values, code, threads, device), typed, args))
    if len({r.key for r in runs}) < len(runs):
        raise UsageError("the grid lists the same run twice (a value repeated in one --grid)")
    return Sweep(study, profile, grid, fixed, out, code, runs, threads, device, allow_cpu)


# ---------------------------------------------------------------------------------------------
# Executing one run
# ---------------------------------------------------------------------------------------------

_children: set[subprocess.Popen] = set()
"""The runs executing now: a sweep that is stopped (SIGTERM, Ctrl-C) stops them too (see `run`)."""


def execute(study: str, profile: str, args: dict[str, str], out: Path, threads: int = 1,
            allow_cpu: bool = False) -> float:
    """`python -m wm run` into OUT in a child process; returns its wall seconds.

    A child process, not runner.run in this one: runner.run points the kernel at its folder
    through environment variables (WM_RESULTS_DIR ...), which threads sharing one process (a
    Dask worker's, or the local pool's) would overwrite for each other. A child also makes a
    killed sweep realistic: the run dies with it, leaving a folder without done.json.
    The run computes on THREADS CPU threads (OMP_NUM_THREADS and MKL_NUM_THREADS of the child,
    which its kernel inherits): the thread count is part of the run's key.
    """
    import os

    cmd = [sys.executable, "-m", "wm", "run", study, "--profile", profile, "--out", str(out)]
    cmd += ["--allow-cpu"] if allow_cpu else []
    for name, text in args.items():
        cmd += ["-p", name, text]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(out / "run.log", "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        _children.add(child)
        try:
            code = child.wait()
        finally:
            _children.discard(child)
    if code != 0:
        tail = (out / "run.log").read_text(errors="replace").strip().splitlines()[-1:]
        raise RunFailed(f"exit {code}: {' '.join(tail)} (log: {out / 'run.log'})")
    if not (out / "results" / f"{study}.csv").is_file():
        raise RunFailed(f"{study} wrote no results table (log: {out / 'run.log'})")
    return time.perf_counter() - started


def _mark_done(sweep: Sweep, run: Run, seconds: float, host: str) -> None:
    """Written last, atomically: from here on the run counts as finished."""
    from wm.results import atomic_write_text

    record = {"key": run.key, "study": sweep.study, "profile": sweep.profile, "parameters": run.args,
              "code_version": sweep.code, "threads": sweep.threads, "device": sweep.device,
              "wall_seconds": round(seconds, 1), "host": host}
    atomic_write_text(sweep.folder(run) / "done.json", json.dumps(record, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# The merged table
# ---------------------------------------------------------------------------------------------

def merge(sweep: Sweep) -> Path | None:
    """Write <out>/<study>.csv from every finished run of this grid (None if there is none).

    Rows come in grid order whatever order the runs finished in, so the table of a sweep does
    not depend on how it was scheduled. Every row of every run is kept: wm.results.Results
    refuses to record one measurement twice, and the `run` column tells runs apart.
    """
    import pandas as pd

    from wm import results

    frames = []
    for run in sweep.runs:
        if not sweep.done(run):
            continue
        frame = results.load(sweep.study, sweep.folder(run) / "results")
        for name, value in run.grid.items():
            frame[f"param_{name}"] = [value] * len(frame)
        frame["run"] = run.key
        frames.append(frame)
    sidecar = {"study": sweep.study, "profile": sweep.profile, "grid": sweep.grid, "fixed": sweep.fixed,
               "code_version": sweep.code, "threads": sweep.threads, "device": sweep.device,
               "runs": len(sweep.runs), "finished": len(frames),
               "keys": {r.key: r.args for r in sweep.runs}}
    path = sweep.out / f"{sweep.study}.csv"
    if frames:
        table = pd.concat(frames, ignore_index=True)
        results.atomic_write_text(path, table.to_csv(index=False, float_format="%.10g", lineterminator="\n"))
        sidecar["rows"] = len(table)
    results.atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2, default=repr) + "\n")
    return path if frames else None


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------

def run(sweep: Sweep, workers: int = 1, scheduler: str | None = None) -> int:
    """Run every unfinished run, merging after each; returns 0, or 1 if a run failed."""
    from tqdm import tqdm

    todo = [r for r in sweep.runs if not sweep.done(r)]
    for r in todo:  # killed mid-way: whatever it left is not trusted
        shutil.rmtree(sweep.folder(r), ignore_errors=True)
    where = f"the Dask cluster at {scheduler}" if scheduler else f"{workers} local worker(s)"
    print(f"wm: sweep {sweep.study} ({sweep.profile}) in {sweep.out}: {len(sweep.runs) - len(todo)} of "
          f"{len(sweep.runs)} runs already finished; {len(todo)} to run on {where}", file=sys.stderr)
    sweep.out.mkdir(parents=True, exist_ok=True)
    merge(sweep)
    failures = []
    bar = tqdm(total=len(sweep.runs), initial=len(sweep.runs) - len(todo), unit="run",
               desc=f"sweep {sweep.study}", file=sys.stderr)

    def finished(run_: Run, error: BaseException | None) -> None:
        if error is not None:
            failures.append(run_)
            bar.write(f"wm: run {run_.key} ({_label(run_)}) failed: {error}", file=sys.stderr)
        else:
            merge(sweep)
        bar.update(1)

    try:
        if scheduler:
            from wm.sweep_dask import on_dask
            on_dask(sweep, todo, scheduler, finished)
        else:
            _locally(sweep, todo, workers, finished)
    finally:
        bar.close()
    table = merge(sweep)
    if failures:
        print(f"wm: {len(failures)} of {len(sweep.runs)} runs failed; rerun the same command to retry "
              f"them (the finished ones are kept)", file=sys.stderr)
        return 1
    print(f"wm: sweep finished: {table}", file=sys.stderr)
    return 0


def _label(run: Run) -> str:
    return ", ".join(f"{k}={v}" for k, v in run.args.items())


def _locally(sweep: Sweep, todo: list[Run], workers: int, finished) -> None:
    """Threads that each wait on one child process: the work is in the children, so threads are
    enough, and only this main thread writes done.json and the merged table."""
    if not todo:
        return

    def one(r: Run) -> float:
        return execute(sweep.study, sweep.profile, r.args, sweep.folder(r), sweep.threads, sweep.allow_cpu)

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(one, r): r for r in todo}
        for future in as_completed(futures):
            r = futures[future]
            if future.exception() is None:
                _mark_done(sweep, r, future.result(), socket.gethostname())
            finished(r, future.exception())
    except BaseException:  # SIGTERM (as SystemExit) or Ctrl-C: start nothing more, stop what runs
        pool.shutdown(wait=False, cancel_futures=True)
        for child in list(_children):
            child.terminate()  # each run then cleans up after its own SIGTERM
        raise
    pool.shutdown()
