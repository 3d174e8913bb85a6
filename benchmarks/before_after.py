"""The studies' published results before and after a change, side by side.

    .venv/bin/python benchmarks/before_after.py --before REV [--after REV] [--write FILE]

Speed work must not change any result beyond seed noise. This reads `data/results/<study>.csv`
and its provenance sidecar at two git revisions (`--after` defaults to the working tree), averages
each row over its seeds, and prints, per study: the notebook's wall time before and after, the
headline rows (the unattacked and control rows, the fidelity, invisibility and surrogate rows)
with both values and their difference, and, over every row the two tables share, the median and
largest absolute difference per metric. `--write FILE` writes the same as Markdown (the
performance chapter includes benchmarks/before_after.md).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ("null_embedding", "watermas", "image_processing", "nulls", "attack_suite", "quickstart")
KEYS = ["method", "model", "experiment", "attack", "strength", "metric", "case"]
# what the headline table shows of each study (the rest is summarised per metric)
HEADLINE = {
    "null_embedding": lambda d: d.experiment.isin(["fidelity", "false_positive", "transfer"]),
    "watermas": lambda d: d.attack.eq("none"),
    "image_processing": lambda d: d.metric.isin(["psnr", "ssim", "success_rate", "bit_acc"]),
    "attack_suite": lambda d: d.attack.eq("none") & ~d.metric.isin(["nc"]) & ~d.experiment.isin(["null_keys"]),
    "nulls": lambda d: d.method.eq("none"),
    "quickstart": lambda d: d.attack.eq("none"),
}


def _read(rev: str | None, path: str) -> str | None:
    """The file at REV (None: the working tree), or None where it does not exist."""
    if rev is None:
        p = ROOT / path
        return p.read_text() if p.is_file() else None
    out = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


def load(rev: str | None, study: str) -> tuple[pd.DataFrame | None, dict]:
    text = _read(rev, f"data/results/{study}.csv")
    side = _read(rev, f"data/results/{study}.json")
    if text is None:
        return None, {}
    d = pd.read_csv(io.StringIO(text), keep_default_na=False)
    if "case" not in d.columns:  # tables from before wm.results had the column
        d["case"] = ""
    d = d[~d.metric.str.contains("seconds")]
    d["value"] = pd.to_numeric(d.value, errors="coerce")
    d = d.dropna(subset=["value"])
    return d.groupby(KEYS, as_index=False).agg(value=("value", "mean"), seeds=("seed", "nunique")), \
        (json.loads(side) if side else {})


def compare(before: str, after: str | None, study: str) -> dict | None:
    old, old_side = load(before, study)
    new, new_side = load(after, study)
    if old is None or new is None:
        return None
    m = old.merge(new, on=KEYS, how="inner", suffixes=("_before", "_after"))
    m["diff"] = m.value_after - m.value_before
    per_metric = (m.assign(absdiff=m["diff"].abs()).groupby("metric")
                  .agg(rows=("absdiff", "size"), median_abs_diff=("absdiff", "median"),
                       max_abs_diff=("absdiff", "max")).reset_index())
    return {"study": study, "rows": m, "per_metric": per_metric, "headline": m[HEADLINE[study](m)],
            "only_before": len(old) - len(m), "only_after": len(new) - len(m),
            "wall": (old_side.get("wall_seconds"), new_side.get("wall_seconds")),
            "commits": (str(old_side.get("commit", ""))[:7], str(new_side.get("commit", ""))[:7]),
            "seeds": int(m.seeds_after.max()) if len(m) else 0}


def _row_name(r) -> str:
    parts = [r.method, r.model, r.experiment]
    if r.attack != "none":
        parts.append(f"{r.attack} {r.strength}".strip())
    return " · ".join(str(p) for p in parts if str(p))


def _num(v: float) -> str:
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def markdown(results: list[dict], before: str, after: str | None) -> str:
    out = [f"Before: the results committed at `{before}`; after: "
           + (f"`{after}`" if after else "the working tree") + ". Values are means over seeds; "
           "`seconds` rows are left out.", ""]
    for c in results:
        wb, wa = c["wall"]
        wall = (f"wall time {wb / 60:.1f} min → {wa / 60:.1f} min ({wb / wa:.2f}×)" if wb and wa else "wall time unknown")
        out += [f"### {c['study']}", "",
                f"Results of commit `{c['commits'][0]}` → `{c['commits'][1]}`; {wall}; {len(c['rows'])} rows in "
                f"both tables ({c['only_before']} only before, {c['only_after']} only after), up to {c['seeds']} "
                "seed(s) each.", "",
                "| row | metric | before | after | difference |", "|---|---|---|---|---|"]
        out += [f"| {_row_name(r)} | {r.metric} | {_num(r.value_before)} | {_num(r.value_after)} | {_num(r['diff'])} |"
                for _, r in c["headline"].iterrows()]
        out += ["", "Every shared row, per metric:", "", "| metric | rows | median abs. difference | largest |",
                "|---|---|---|---|"]
        out += [f"| {r.metric} | {r.rows} | {_num(r.median_abs_diff)} | {_num(r.max_abs_diff)} |"
                for _, r in c["per_metric"].iterrows()]
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision of the results before")
    ap.add_argument("--after", default=None, help="git revision of the results after (default: the working tree)")
    ap.add_argument("--studies", default=",".join(STUDIES), help="comma-separated studies")
    ap.add_argument("--write", default=None, help="also write the Markdown to this file")
    args = ap.parse_args()
    studies = [s.strip() for s in args.studies.split(",") if s.strip()]
    unknown = sorted(set(studies) - set(STUDIES))
    if unknown:
        ap.error(f"unknown stud{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}: choose from {', '.join(STUDIES)}")
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{args.before}^{{commit}}"],
                      capture_output=True).returncode:
        ap.error(f"--before {args.before}: not a git revision of this repository")
    results = [c for s in studies if (c := compare(args.before, args.after, s)) is not None]
    if not results:
        sys.exit("no study has results at both revisions")
    text = markdown(results, args.before, args.after)
    print(text)
    if args.write:
        Path(args.write).write_text(text)


if __name__ == "__main__":
    main()
