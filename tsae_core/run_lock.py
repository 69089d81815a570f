"""One `tsae run` at a time per run directory: an exclusive lock that names its holder.

`run_lock(run_dir)` takes an `flock` on `runs/<run>/.lock` for the whole run and writes the
holder's pid, start time and command into it; a second run of the same directory fails at once
with `RunDirectoryLocked` naming them. The kernel does not inherit the lock's descriptor, and the
lock dies with its process, so a killed run never leaves the directory locked. Under the lock,
temporary files that a killed tsae writer left behind are removed: only files whose name tsae gave
them (`.tsae-tmp.<name>.<random>.tmp`), never a user's own `.*.tmp` files.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from tsae_core.io import TEMP_PREFIX, is_own_temporary

LOCK_FILE = ".lock"


class RunDirectoryLocked(RuntimeError):
    """Another `tsae run` holds this run directory; the message names its pid and command."""


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']}, started {info['started']}: {info['command']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "pid unknown"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the duration of the block."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            pid = holder.split(",")[0].removeprefix("pid ")
            raise RunDirectoryLocked(
                f"run directory {run_dir} is in use by another tsae run ({holder}); wait for it to finish"
                + (f" or stop it (kill -INT {pid})" if pid.isdigit() else "")) from None
        info = {"pid": os.getpid(), "started": _dt.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(["tsae", *sys.argv[1:]])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        remove_stale_temporaries(run_dir)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Temporary files of tsae's atomic writes (`.tsae-tmp.<name>.<random>.tmp[.ipynb]`) left by a
    killed process; files tsae did not name are left alone, whatever their name ends with."""
    stale = [Path(folder) / name for folder, _, files in os.walk(run_dir)  # links to folders are not followed
             for name in files if name.startswith(TEMP_PREFIX) and is_own_temporary(name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
