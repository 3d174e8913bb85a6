"""Command line: `python3 -m wm {book,test,run,sweep,data,setup}`.

Every command first makes sure it runs inside the project's environment (see wm._setup):
from a bare `python3` on a fresh clone it builds `.venv/` from the pins and re-executes itself
there. Usage errors are caught before that, so they cost nothing and write nothing.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from wm import PROFILES, ROOT
from wm import _setup, runner, sweep


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as for every usage error
        sys.exit(_usage_exit(message))


def _usage_exit(message: str) -> int:
    print(f"wm: error: {message}", file=sys.stderr)
    return 2


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m wm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="execute one study notebook with papermill")
    r.add_argument("study", help="a notebook name in notebooks/ (without .ipynb)")
    r.add_argument("--profile", default="auto", help=f"{', '.join(PROFILES)} or auto (default)")
    r.add_argument("-p", dest="params", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="override one notebook parameter")
    r.add_argument("--out", type=Path, default=None,
                   help="the run's folder: the executed notebook, results/ and figures/ (default: a new "
                        "data/runs/STUDY-PROFILE-TIME/); nothing in book/ or data/results/ changes")
    r.add_argument("--publish", action="store_true",
                   help="from a clean tree: then move the finished notebook, its table, sidecar and "
                        "figures into book/ and data/results/ (the published chapter)")
    r.add_argument("--allow-cpu", action="store_true",
                   help="let --profile gpu run on a machine without CUDA (its code paths, on the CPU)")

    s = sub.add_parser("sweep", help="run a study over a grid of parameters, locally or on a Dask cluster")
    s.add_argument("study", help="a notebook name in notebooks/ (without .ipynb)")
    s.add_argument("--profile", default="auto", help=f"{', '.join(PROFILES)} or auto (default)")
    s.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                   help="values of one parameter (repeat for more: the runs are the Cartesian product)")
    s.add_argument("-p", dest="params", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="a parameter fixed for every run")
    s.add_argument("--workers", type=int, default=None, help="local runs at a time (default 1)")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads of each run (default: the cores / --workers locally, 1 on Dask); "
                        "part of each run's key, since the thread count changes CPU results")
    s.add_argument("--oversubscribe", action="store_true",
                   help="allow --workers x --threads above this machine's cores")
    s.add_argument("--allow-cpu", action="store_true", help="as for run: --profile gpu without CUDA")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask cluster, e.g. tcp://host:8786, instead of locally")
    s.add_argument("--out", type=Path, default=None,
                   help="the sweep folder (default data/sweeps/STUDY-PROFILE/)")

    b = sub.add_parser("book", help="execute and publish every notebook (from a clean tree), then build the HTML book")
    b.add_argument("--profile", default="auto")
    b.add_argument("--no-run", action="store_true",
                   help="build from the executed notebooks already in book/")
    b.add_argument("--allow-cpu", action="store_true", help="as for run: --profile gpu without CUDA")
    b.add_argument("--path-output", type=Path, default=ROOT,
                   help="where _build/ goes (default: the repository root)")

    t = sub.add_parser("test", help="run the test suite (extra arguments go to pytest)")
    t.add_argument("pytest_args", nargs=argparse.REMAINDER)

    sub.add_parser("data", help="obtain and verify the data sets")
    sub.add_parser("setup", help="create the environment and obtain the data, nothing else")
    return p


def build_book(path_output: Path) -> Path:
    """`jupyter-book build` with warnings as errors; returns the path of index.html."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe), "build", str(ROOT), "--path-output", str(path_output), "-W", "--keep-going"]
    if subprocess.run(cmd).returncode != 0:
        sys.exit("wm: the book build failed (warnings count as errors); see the messages above")
    return path_output / "_build" / "html" / "index.html"


def _terminated(signum, frame):
    """SIGTERM unwinds like Ctrl-C: temporary folders are removed and the kernel is shut down."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)

    try:  # validate before building anything
        if args.command == "run":
            if args.publish and args.out is not None:
                raise runner.UsageError("--publish writes into book/ and data/results/: leave out --out")
            runner.check_out(args.out)
            runner.check_request(args.study, args.profile, dict(args.params))
            if args.publish:
                runner.check_publishable()
        if args.command == "sweep":
            grid = sweep.check(args.study, args.profile, args.grid, dict(args.params),
                               args.workers, args.scheduler, args.threads, args.oversubscribe, args.out)
        if args.command == "book" and args.profile not in (*PROFILES, "auto"):
            raise runner.UsageError(f"unknown profile {args.profile!r}")
        if args.command == "book" and not args.no_run:
            runner.check_publishable()
    except runner.UsageError as err:
        return _usage_exit(str(err))

    if not _setup.in_project_env():
        _setup.reexec_in_venv(argv)

    from wm import data  # inside the environment from here on

    if args.command in ("data", "setup", "test", "book"):
        try:
            where = data.ensure_fashion_mnist()
        except data.DataError as err:
            print(f"wm: {err}", file=sys.stderr)
            return 1
        print(f"wm: Fashion-MNIST verified in {where}", file=sys.stderr)

    if args.command == "test":  # tests/test_browser.py drives Debian's Chromium: install it now
        try:
            chromium, chromedriver = _setup.ensure_chromium()
            print(f"wm: Chromium found at {chromium} (driver {chromedriver})", file=sys.stderr)
        except _setup.BrowserError as err:  # the rest of the suite still runs; the browser test fails
            print(f"wm: {err}", file=sys.stderr)
        return subprocess.run([sys.executable, "-m", "pytest", *args.pytest_args], cwd=ROOT).returncode

    if args.command == "run":
        try:
            path = runner.run(args.study, args.profile, dict(args.params), args.out,
                              publish=args.publish, allow_cpu=args.allow_cpu)
        except runner.UsageError as err:
            return _usage_exit(str(err))
        except RuntimeError as err:
            print(f"wm: {err}", file=sys.stderr)
            return 1
        print(f"wm: wrote {path}", file=sys.stderr)

    if args.command == "sweep":
        try:
            plan = sweep.plan(args.study, args.profile, grid, dict(args.params), args.out,
                              workers=args.workers or 1, threads=args.threads, scheduler=args.scheduler,
                              allow_cpu=args.allow_cpu)
        except runner.UsageError as err:
            return _usage_exit(str(err))
        try:
            return sweep.run(plan, workers=args.workers or 1, scheduler=args.scheduler)
        except RuntimeError as err:
            print(f"wm: {err}", file=sys.stderr)
            return 1

    if args.command == "book":
        if not args.no_run:
            for study in runner.studies():
                start = time.perf_counter()
                print(f"wm: executing {study} ({args.profile})", file=sys.stderr, flush=True)
                try:
                    runner.run(study, args.profile, publish=True, allow_cpu=args.allow_cpu)
                except (runner.UsageError, RuntimeError) as err:
                    print(f"wm: {err}", file=sys.stderr)
                    return 1
                print(f"wm: {study} done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        index = build_book(args.path_output)
        print(f"wm: the book is at {index}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
