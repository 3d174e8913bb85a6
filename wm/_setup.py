"""Create or reuse the project's virtual environment from the exact pins (standard library only).

`python3 -m wm COMMAND` on a fresh clone lands here first: it builds `.venv/` from
`requirements.lock`, links the checkout into it, then re-executes the same command with the
environment's interpreter. A stamp file holds the lock's SHA-256 and the Python version, so a
second call reuses the environment in a second and a changed lock rebuilds it.
Conda/mamba users who built `environment.yml` set WM_USE_CURRENT_ENV=1 to stay where they are.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

from wm import ROOT

VENV = ROOT / ".venv"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / ".wm-lock"
MIN_PYTHON = (3, 11)


def venv_python() -> Path:
    return VENV / "bin" / "python"


def in_project_env() -> bool:
    """True inside .venv, or where the user asked to use the active environment."""
    if os.environ.get("WM_USE_CURRENT_ENV") == "1":
        return True
    return Path(sys.prefix).resolve() == VENV.resolve()


def _wanted_stamp() -> str:
    lock_hash = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    return f"{lock_hash} python{sys.version_info.major}.{sys.version_info.minor}\n"


def ensure_venv() -> Path:
    """Build .venv from requirements.lock unless an up-to-date one is there; return its python."""
    if sys.version_info < MIN_PYTHON:
        sys.exit(f"wm: Python {'.'.join(map(str, MIN_PYTHON))}+ is needed, this is {sys.version.split()[0]}")
    if not LOCK.is_file():
        sys.exit(f"wm: the lock file {LOCK} is missing")
    wanted = _wanted_stamp()
    if STAMP.is_file() and STAMP.read_text() == wanted and venv_python().exists():
        return venv_python()

    print(f"wm: creating the environment {VENV} from {LOCK.name} (a few minutes the first time)",
          file=sys.stderr, flush=True)
    if VENV.exists():
        shutil.rmtree(VENV)
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    log = VENV / "install.log"
    cmd = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check",
           "--no-input", "-r", str(LOCK)]
    with open(log, "w") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        STAMP.unlink(missing_ok=True)
        sys.exit("wm: installing the pinned packages failed; last lines of "
                 f"{log}:\n" + "\n".join(tail))
    # Put the checkout on the environment's path (what an editable install does, without
    # needing a build backend): notebooks' kernels then import this very `wm`.
    site = subprocess.run([str(venv_python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "wm_study.pth").write_text(str(ROOT) + "\n")
    STAMP.write_text(wanted)
    return venv_python()


def reexec_in_venv(argv: list[str]) -> None:
    """Replace this process by `.venv/bin/python -m wm ARGV` (never returns)."""
    python = ensure_venv()
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    os.execve(str(python), [str(python), "-m", "wm", *argv], env)
