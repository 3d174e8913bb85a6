"""The tidy results table: one row per measured number, one CSV per study.

`<study>.csv` holds the rows and `<study>.json` beside it the provenance (commit, device,
versions, parameters, start and wall time). Both are written atomically (a temporary file in the
same folder, then os.replace): a killed run never leaves half a table.

Where a run writes is never the published book: a notebook's table goes to `$WM_OUT/results/` and
its figures to `$WM_OUT/figures/`. The runner sets WM_OUT to the run's own folder; a notebook run
by papermill or Jupyter directly gets a scratch folder `data/runs/<study>-<profile>-<time>/` instead.
Only `python -m wm run --publish` (and `python -m wm book`) moves a finished run's notebook, table,
sidecar and figures into `book/` and `data/results/` (wm.runner.publish).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from wm import PROFILES, ROOT, STUDIES, __version__

COLUMNS = ("study", "method", "model", "experiment", "attack", "strength", "seed", "metric", "value", "profile", "case")
"""The study's columns (the book's chapter *Reproducing the study* describes them), and `case`: what tells apart rows that share all the others (one control
among several of an experiment, e.g. 'random signature vs owner's model'); empty otherwise.
Tables written before it existed are read with an empty `case`."""
STUDY_ATTACKS = ("none", "transfer")
"""Attack names of the table beyond the registries': `none` (unattacked) and the null-embedding
study's transfer learning."""
METRICS = ("score", "p_value", "threshold", "tpr_at_fpr", "auc", "fpr", "fpr_upper", "test_acc", "wm_acc_null", "wm_acc_true", "verified", "ber", "psnr", "ssim", "nc", "nc_raw",
           "success_rate", "success_rate_amp", "bit_acc", "sharpness", "seconds")
RATES = {"p_value", "tpr_at_fpr", "auc", "fpr", "fpr_upper", "test_acc", "wm_acc_null", "wm_acc_true", "verified", "ber", "success_rate", "success_rate_amp", "bit_acc"}
EXAMPLE_STUDY = "quickstart"  # the clean reference: what each attack costs a model with no watermark


def attacks_vocabulary() -> tuple[str, ...]:
    """The table's attack names: `none`, every registered attack and every method's own
    (wm.attacks, wm.methods), and the study-only ones of STUDY_ATTACKS."""
    from wm import attacks, methods
    return (STUDY_ATTACKS[0], *attacks.REGISTRY, *methods.own_attacks(), *STUDY_ATTACKS[1:])


PUBLISHED_RESULTS = ROOT / "data" / "results"
"""The published tables: written only by publishing (wm.runner.publish), read by the comparison."""
PUBLISHED_FIGURES = ROOT / "book" / "figures"
SCRATCH = ROOT / "data" / "runs"
"""Scratch runs (git-ignored): every run's default destination."""
PUBLISHED_PATHS = ("book/*.ipynb", "book/figures", "data/results")
"""What publishing writes: left out of the clean-tree check, so that publishing one chapter does
not make the tree 'dirty' for the next."""

_scratch: Path | None = None


def scratch_folder(label: str) -> Path:
    """A new folder name data/runs/<label>-<time>/ (made unique with the process id if taken)."""
    path = SCRATCH / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    return path.with_name(f"{path.name}-{os.getpid()}") if path.exists() else path


def output_dir(label: str = "notebook") -> Path:
    """Where this process's run writes: $WM_OUT, else one scratch folder chosen once per process."""
    global _scratch
    if os.environ.get("WM_OUT"):
        return Path(os.environ["WM_OUT"])
    if _scratch is None:
        _scratch = scratch_folder(label)
    return _scratch


def results_dir() -> Path:
    return output_dir() / "results"


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Let WRITE fill a temporary file beside PATH, then rename it over PATH: readers see the old
    file or the new one, never a mix, and a failed WRITE leaves nothing behind. The one atomic
    write of the project (tables, sidecars, figures, executed notebooks)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # the suffix tells savefig the format
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write TEXT to PATH atomically (see atomic_write)."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def device_name() -> str:
    """The GPU's name where CUDA is used, else the CPU model and the threads torch uses."""
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_name()


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_name() -> str:
    """The CPU model and the threads torch uses (what device_name says on a machine without CUDA)."""
    import torch
    n = torch.get_num_threads()
    return f"CPU ({cpu_model()}, {n} thread{'s' if n != 1 else ''})"


def source_status() -> str:
    """`git status --porcelain` of the sources (untracked files included), leaving out what
    publishing writes; empty for a clean tree."""
    return _git("status", "--porcelain", "--untracked-files=all", "--", ".",
                *(f":(exclude){p}" for p in PUBLISHED_PATHS))


def gpu_without_cuda(profile: str) -> bool:
    import torch
    return profile == "gpu" and not torch.cuda.is_available()


def provenance(parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where and how a number was made: commit, device, versions, parameters, start time."""
    import numpy
    import torch
    import torchvision
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": numpy.__version__, "wm": __version__}
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(source_status()),
        "device": device_name(),
        "versions": versions,
        "parameters": dict(parameters or {}),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


class Results:
    """Rows of one study's table; `save` writes the CSV and its provenance sidecar."""

    def __init__(self, study: str, profile: str, parameters: dict[str, Any] | None = None):
        if study not in (*STUDIES, EXAMPLE_STUDY):
            raise ValueError(f"unknown study {study!r}: choose from {', '.join(STUDIES)}")
        if profile not in PROFILES:
            raise ValueError(f"profile {profile!r} must be one of {', '.join(PROFILES)} (resolve auto first)")
        self.study, self.profile = study, profile
        self.rows: list[dict[str, Any]] = []
        self._keys: set[tuple] = set()
        self.provenance = provenance(parameters)
        if gpu_without_cuda(profile):
            from wm.config import GPU_WITHOUT_CUDA
            self.provenance["warnings"] = [GPU_WITHOUT_CUDA]
        output_dir(f"{study}-{profile}")  # outside the runner: this run's scratch folder is named now
        self._start = time.perf_counter()

    def add(self, *, method: str, model: str, experiment: str, metric: str, value: float,
            seed: int, attack: str = "none", strength: float | int | str | None = None, case: str = "") -> None:
        """One measured number; the column values are checked against the table's vocabulary."""
        if attack not in attacks_vocabulary():
            raise ValueError(f"unknown attack {attack!r}: choose from {', '.join(attacks_vocabulary())}")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: choose from {', '.join(METRICS)}")
        value = float(value)
        if metric in RATES and not math.isnan(value) and not 0 <= value <= 1:
            raise ValueError(f"{metric}={value} is a rate and must lie in [0, 1]")
        if attack == "none" and strength not in (None, ""):
            raise ValueError("an unattacked row has no strength")
        row = {"study": self.study, "method": method, "model": model, "experiment": experiment,
               "attack": attack, "strength": "" if strength is None else strength,
               "seed": int(seed), "metric": metric, "value": value, "profile": self.profile, "case": str(case)}
        # every row is one measurement: two rows that differ only in value would be merged or
        # refused by whoever reads the table (a sweep), so the second is an error here, at the source
        key = tuple(str(row[c]) for c in COLUMNS if c != "value")
        if key in self._keys:
            raise ValueError(f"{self.study} records ({', '.join(f'{c}={row[c]!r}' for c in COLUMNS if c != 'value')}) "
                             "twice: give each measurement its own method, model, experiment, strength, seed or case")
        self._keys.add(key)
        self.rows.append(row)

    def frame(self):
        import pandas as pd
        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    def save(self, directory: str | Path | None = None) -> Path:
        """Write <dir>/<study>.csv and <dir>/<study>.json atomically; return the CSV's path."""
        directory = Path(directory) if directory is not None else results_dir()
        csv_path = directory / f"{self.study}.csv"
        atomic_write_text(csv_path, self.frame().to_csv(index=False, float_format="%.10g", lineterminator="\n"))
        prov = dict(self.provenance, profile=self.profile, rows=len(self.rows),
                    wall_seconds=round(time.perf_counter() - self._start, 1))
        atomic_write_text(csv_path.with_suffix(".json"), json.dumps(prov, indent=2, sort_keys=True) + "\n")
        return csv_path


def _value(text: str) -> float:
    """A value cell: a number, or empty for NaN (how to_csv writes a measurement that does not
    exist, e.g. the accuracies of a verification refused at the signature check)."""
    return float(text) if text != "" else math.nan


def load(study: str, directory: str | Path | None = None):
    """A study's table as a DataFrame (strength kept as text: it mixes numbers and blanks), from
    DIRECTORY or else the published data/results/."""
    import pandas as pd
    path = Path(directory if directory is not None else PUBLISHED_RESULTS) / f"{study}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no results table at {path}: run `python -m wm run {study}` first")
    table = pd.read_csv(path, dtype={"strength": str, "case": str}, keep_default_na=False,
                        converters={"value": _value})
    if "case" not in table.columns:
        table["case"] = ""
    return table


def load_merged(study: str, cfg, merged, drop: tuple[str, ...] = ()):
    """The rows of a sweep of STUDY over seeds (`python -m wm sweep STUDY --grid seed=0,1,2 -p
    seeds 1`, its merged table MERGED) and the wall seconds of each run, after checking that every
    run finished and ran CFG's parameters (a StudyConfig) but for its seed, and that together they
    cover CFG's seeds. Rows of the experiments in DROP are left out (what the chapter recomputes).

    A study whose Config names SPLIT = (parameter, legacy value) may split a seed's run by that
    parameter (a tuple of parts, e.g. tuning's `parts`), and MERGED may then name several merged
    tables separated by `+` (sweeps made at different times): together their runs must cover every
    part of CFG's parameter for every seed, each once. A run recorded before the parameter existed
    did the legacy parts.
    Returns (rows for Results.add, a DataFrame of run times and folders indexed by seed, with the
    run's `parts` where split); raises ValueError naming what does not match."""
    import pandas as pd

    from wm.runner import parse_value

    split, legacy = getattr(type(cfg), "SPLIT", (None, None))
    paths = [Path(p) for p in str(merged).split("+")]
    if len(paths) > 1 and split is None:
        raise ValueError(f"{merged}: {study} runs are not split by part, so one merged table shows them")
    apart = ("seed", "seeds", "profile", "merged") + ((split,) if split else ())
    mine = {k: v for k, v in cfg.as_dict().items() if k not in apart}
    pieces, timings, rows = [], [], []
    for path in paths:
        if not path.is_file() or not path.with_suffix(".json").is_file():
            raise ValueError(f"{path}: no merged sweep table (and its .json) there")
        sweep = json.loads(path.with_suffix(".json").read_text())
        if sweep.get("study") != study or sweep.get("profile") != cfg.profile:
            raise ValueError(f"{path} is a sweep of {sweep.get('study')} at {sweep.get('profile')}, not {study} at {cfg.profile}")
        if sweep["finished"] != sweep["runs"]:
            raise ValueError(f"{path}: only {sweep['finished']} of its {sweep['runs']} runs finished")
        for key, args in sweep["keys"].items():
            values = {k: parse_value(v) for k, v in args.items()}
            if split:
                values.setdefault(split, legacy)
            run = type(cfg).from_profile(cfg.profile, **values)
            theirs = {k: v for k, v in run.as_dict().items() if k not in apart}
            if theirs != mine:
                diff = sorted(k for k in mine if mine[k] != theirs[k])
                raise ValueError(f"{path}: run {key} ran other parameters than this chapter's ({', '.join(diff)})")
            parts = tuple(getattr(run, split)) if split else (None,)
            pieces += [(s, p) for s in range(run.seed, run.seed + run.seeds) for p in parts]
            done = json.loads((path.parent / "runs" / key / "done.json").read_text())
            timings.append({"seed": run.seed, "total": done["wall_seconds"], "threads": done["threads"], "device": done["device"],
                            "folder": path.parent / "runs" / key, **({"parts": ",".join(parts)} if split else {})})
        table = pd.read_csv(path, dtype={"strength": str, "case": str}, keep_default_na=False, converters={"value": _value})
        table = table[~table.experiment.isin(drop)]
        rows += [{c: r[c] for c in COLUMNS if c not in ("study", "profile")} for r in table.to_dict("records")]
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    wanted = [(s, p) for s in seeds for p in (tuple(getattr(cfg, split)) if split else (None,))]
    if sorted(pieces, key=str) != sorted(wanted, key=str):
        if not split:
            raise ValueError(f"{merged}: its runs cover seeds {sorted(s for s, _ in pieces)}, not {cfg.seed}..{cfg.seed + cfg.seeds - 1}")
        raise ValueError(f"{merged}: its runs cover (seed, part) {sorted(pieces, key=str)}, not every part of "
                         f"{', '.join(getattr(cfg, split))} for seeds {cfg.seed}..{cfg.seed + cfg.seeds - 1} once")
    for r in rows:
        r["strength"] = None if r["attack"] == "none" else r["strength"]
    return rows, pd.DataFrame(timings).set_index("seed").sort_index()
