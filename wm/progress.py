"""Live progress lines of long training loops, on the terminal of whoever runs the notebook.

A notebook's own outputs are the published chapter, so progress cannot go there (each refresh
of a bar would be stored). Instead every long loop calls `Progress.update`, which writes one line
(`wm: stage 1: epoch 2/8, step 310/1500, 41 s`) at most every few seconds to the kernel
process's original stderr: the terminal of `python -m wm run` (and of papermill run directly),
or a sweep run's run.log. The runner turns it on (WM_PROGRESS=1) at the cpu and gpu profiles and
leaves it off at smoke; WM_PROGRESS_SECONDS sets the interval (default 10 s). The hot loop pays
one clock read per step, never a device sync.
"""

from __future__ import annotations

import os
import sys
import time


class Progress:
    """Progress of one loop of TOTAL steps in EPOCHS passes."""

    def __init__(self, desc: str, total: int, epochs: float | None = None):
        self.desc, self.total, self.epochs = desc, total, epochs
        self.enabled = os.environ.get("WM_PROGRESS") == "1"
        self.every = float(os.environ.get("WM_PROGRESS_SECONDS") or 10)
        self.start = self.last = time.perf_counter()

    def update(self, step: int, epoch: int | None = None) -> None:
        """After STEP steps (1-based) of the loop; EPOCH is the 0-based pass it is in."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.last < self.every and step != self.total:
            return
        self.last = now
        where = f"epoch {epoch + 1}/{self.epochs:g}, " if epoch is not None and self.epochs else ""
        stream = sys.__stderr__ or sys.stderr  # the process's stderr, not a notebook cell's
        print(f"wm: {self.desc}: {where}step {step}/{self.total}, {now - self.start:.0f} s", file=stream, flush=True)


class Laps:
    """Seconds per named phase of a run, kept out of the results table (same-seed runs must give
    identical tables): `lap = Laps()`, then `lap("training")` after each phase; `lap.seconds`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self._t = now - self._t, now
