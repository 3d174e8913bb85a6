"""The Dask side of `python -m wm sweep --scheduler ADDRESS` (wm.sweep): one task per unfinished
run on an existing cluster, executed on a worker into a temporary folder whose files come back to
the client, which writes them into the sweep folder and marks the run done. Imported only when a
sweep names a scheduler."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

from wm.sweep import Run, RunFailed, Sweep, _mark_done, device_kind, execute, source_hash


def execute_remote(study: str, profile: str, args: dict[str, str], sources: str, threads: int = 1,
                   device: str = "", allow_cpu: bool = False) -> dict[str, Any]:
    """A run on a Dask worker: executed into a temporary folder there, its files sent back.

    The worker needs this repository importable and the project's environment, not the
    client's file system: the client writes the files into the sweep folder itself.
    """
    if source_hash(study) != sources:  # the key promises this code made the numbers
        raise RunFailed(f"the worker on {socket.gethostname()} has other wm/ sources than the "
                        f"client (hash {source_hash(study)}, not {sources}): sync its checkout")
    if device and device_kind() != device:  # so is the device: other hardware, other numbers
        raise RunFailed(f"the worker on {socket.gethostname()} computes on {device_kind()}, not on "
                        f"{device} as the sweep's keys say: run the sweep from a machine like its workers")
    with tempfile.TemporaryDirectory(prefix="wm-sweep-") as tmp:
        seconds = execute(study, profile, args, Path(tmp), threads, allow_cpu)
        files = {p.relative_to(tmp).as_posix(): p.read_bytes()
                 for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    return {"seconds": seconds, "host": socket.gethostname(), "files": files}


def on_dask(sweep: Sweep, todo: list[Run], scheduler: str, finished) -> None:
    """One Dask task per unfinished run on an existing cluster; the files come back here."""
    if not todo:  # nothing to run: no need for the cluster
        return
    from distributed import Client, as_completed as dask_completed

    try:
        client = Client(scheduler, timeout="30s")
    except Exception as err:  # noqa: BLE001 - OSError, TimeoutError, or distributed's own: one line
        raise RuntimeError(f"cannot reach the Dask scheduler at {scheduler}: {type(err).__name__}: {err}") from None
    sources = sweep.code.split("+", 1)[1]
    with client:
        futures = {client.submit(execute_remote, sweep.study, sweep.profile, r.args, sources, sweep.threads,
                                 sweep.device, sweep.allow_cpu, key=f"wm-{sweep.study}-{r.key}", pure=False): r
                   for r in todo}
        for future in dask_completed(futures):
            r = futures[future]
            error = None
            if future.status != "finished":  # an error raised in the run, or a cancelled task
                try:
                    error = future.exception()
                except BaseException as err:  # noqa: BLE001 - cancelled: exception() raises
                    error = err
            if error is None:
                got = future.result()
                for rel, data in got["files"].items():  # no done.json yet: unfinished if killed here
                    dest = sweep.folder(r) / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(data)
                _mark_done(sweep, r, got["seconds"], got["host"])
            finished(r, error)
