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


# ---------------------------------------------------------------------------------------------
# The browser the book's browser test drives (tests/test_browser.py): Debian's Chromium
# ---------------------------------------------------------------------------------------------

CHROMIUM_PACKAGES = ("chromium", "chromium-driver")
# Installed without Chromium's recommends (printer tools, a notification daemon, upower), but
# with the one that matters headless: fonts, so that the screenshots show readable text.
CHROMIUM_EXTRAS = ("fonts-liberation",)


class BrowserError(RuntimeError):
    """Chromium or its driver is missing and could not be installed: the message says how."""


def find_chromium() -> tuple[Path, Path] | None:
    """(chromium, chromedriver) found on PATH or in /usr/bin, or None if either is missing."""
    found = []
    for name in ("chromium", "chromedriver"):
        path = shutil.which(name) or shutil.which(name, path="/usr/bin")
        if path is None:
            return None
        found.append(Path(path))
    return found[0], found[1]


def ensure_chromium() -> tuple[Path, Path]:
    """Find Chromium and chromedriver, or install Debian's packages with apt-get when root.

    The browser test never downloads a browser of its own: it drives Debian's `chromium`
    through Debian's `chromedriver`, the same versions on every run.
    """
    found = find_chromium()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"wm: installing Debian's {' and '.join(CHROMIUM_PACKAGES)} with apt-get", file=sys.stderr, flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                               *CHROMIUM_PACKAGES, *CHROMIUM_EXTRAS],
                              capture_output=True, text=True, env=env)
        found = find_chromium()
        if found is None:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-10:])
            raise BrowserError(f"apt-get install {' '.join(CHROMIUM_PACKAGES)} failed "
                               f"(exit {done.returncode}); its last lines:\n{tail}")
    if found is None:
        raise BrowserError("Chromium and chromedriver are needed by the browser test and are not on PATH "
                           "or in /usr/bin; install Debian's packages (as root: apt-get install "
                           f"{' '.join(CHROMIUM_PACKAGES)}) or put both executables on PATH")
    return found
