"""Executing one stage's notebook with papermill: a local kernel that leaves nothing behind, Ctrl-C
forwarded to it, and the executed notebook written atomically.

The kernel runs in its own session (jupyter_client starts it so), so a terminal's Ctrl-C reaches
only the runner. While a notebook runs, the runner's SIGINT handler forwards the first Ctrl-C to
the kernel (which stops at a step boundary, see `tsae_core.interrupts`) and kills the kernel on the
second; the runner then returns within seconds, whatever papermill was waiting for: the kernel
manager is asynchronous, as nbclient expects (a blocking one stalls nbclient's event loop in a read
without timeout, so it never sees the kernel die), and an alarm bounds the rest. A third Ctrl-C
raises `KeyboardInterrupt` at once. Whatever happens, the kernel process is gone and its files
(connection file and IPC sockets, in one `tsae-kernel-<runner pid>-*` folder of the temporary
directory) are removed when `execute_notebook` returns; folders of runners that died (SIGKILL) are
removed by `remove_stale_kernel_files` at the next start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tsae_core.io import DiskFull, atomic_path, is_disk_full

KERNEL_DIR_PREFIX = "tsae-kernel-"


class NotebookFailed(RuntimeError):
    """The notebook raised: `ename` and `evalue` are the error's type name and message."""

    def __init__(self, ename: str, evalue: str) -> None:
        super().__init__(f"{ename}: {evalue}")
        self.ename, self.evalue = ename, evalue


class NotebookInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the notebook; the kernel is shut down and its files removed."""


# --------------------------------------------------------------------------------------------
# Kernel files
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def remove_stale_kernel_files(tmp: str | Path | None = None) -> list[Path]:
    """Remove kernel folders of runners no longer alive, and stray kernel sockets nobody listens on
    (left by older versions, which put them straight in the temporary directory)."""
    tmp = Path(tmp or tempfile.gettempdir())
    removed = []
    for path in tmp.glob(f"{KERNEL_DIR_PREFIX}*"):
        try:
            if path.is_dir() and not path.is_symlink():
                pid = path.name[len(KERNEL_DIR_PREFIX):].split("-", 1)[0]
                if pid.isdigit() and not _pid_alive(int(pid)):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
            elif stat.S_ISSOCK(path.lstat().st_mode) and not _socket_in_use(path):
                path.unlink(missing_ok=True)
                removed.append(path)
        except OSError:
            continue  # another process removed or owns it
    return removed


def _kernel_manager_class(kernels: list[Any]) -> type:
    """A kernel manager on local IPC sockets in its own folder (`tsae-kernel-<pid>-<id>`): the kernel is
    reachable only through this machine's files, not an unencrypted TCP port, and a dead runner's
    leftovers are recognisable by its pid. Each instance is appended to `kernels`."""
    from jupyter_client.manager import AsyncKernelManager

    class LocalKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            folder = Path(tempfile.gettempdir()) / f"{KERNEL_DIR_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            folder.mkdir(mode=0o700)
            self.kernel_folder = folder
            self.transport = "ipc"
            self.ip = str(folder / "ipc")  # sockets `ipc-<n>`, removed when the kernel shuts down
            self.connection_file = str(folder / "kernel.json")
            kernels.append(self)

        async def start_kernel(self, **kw: Any) -> None:  # the async manager's start is a coroutine
            # the kernel's stderr reaches the runner's terminal: text progress bars, not widgets (tsae_core.progress)
            kw["env"] = {**kw.get("env", os.environ), "TSAE_PROGRESS": "text"}
            await super().start_kernel(**kw)

    return LocalKernelManager


def _kernel_pid(km: Any) -> int | None:
    process = getattr(getattr(km, "provisioner", None), "process", None)
    return getattr(process, "pid", None)


def _signal_kernel(km: Any, sig: int) -> None:
    pid = _kernel_pid(km)
    if pid is None:
        return
    with contextlib.suppress(OSError):
        os.killpg(os.getpgid(pid), sig)  # the kernel leads its own process group


def _dispose(km: Any) -> None:
    """Make sure the kernel process is gone and its folder removed."""
    pid = _kernel_pid(km)
    process = getattr(getattr(km, "provisioner", None), "process", None)
    if pid is not None and process is not None and process.poll() is None:
        _signal_kernel(km, signal.SIGKILL)
        with contextlib.suppress(Exception):
            process.wait(timeout=10)
    with contextlib.suppress(Exception):
        km.cleanup_connection_file()
    with contextlib.suppress(Exception):
        km.cleanup_ipc_files()
    shutil.rmtree(km.kernel_folder, ignore_errors=True)


STOP_AT_ONCE_S = 5.0
"""After the second Ctrl-C, the longest the runner waits for papermill to notice the killed kernel
before it stops waiting (papermill normally notices within a second)."""


@contextlib.contextmanager
def _forward_sigint(kernels: list[Any]) -> Iterator[list[int]]:
    """While a notebook runs: the first Ctrl-C interrupts the kernel (it stops at a step boundary);
    the second kills it and, should papermill still be waiting `STOP_AT_ONCE_S` later, raises
    `KeyboardInterrupt` here (an alarm), so no wait outlives it; a third raises at once."""
    count = [0]
    alarm: list[Any] = []  # the SIGALRM handler replaced, once the alarm is armed

    def give_up(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def handle(signum: int, frame: Any) -> None:
        count[0] += 1
        if count[0] >= 3 or not kernels:
            raise KeyboardInterrupt
        if count[0] == 1:
            print("\n[tsae] interrupting: the stage stops at the end of its current step (Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)
            _signal_kernel(kernels[-1], signal.SIGINT)
            return
        print("\n[tsae] stopping at once: the kernel is killed, its current step is lost", file=sys.stderr, flush=True)
        _signal_kernel(kernels[-1], signal.SIGKILL)
        alarm.append(signal.signal(signal.SIGALRM, give_up))
        signal.setitimer(signal.ITIMER_REAL, STOP_AT_ONCE_S)

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield count
    finally:
        if alarm:  # only an alarm of ours is disarmed (a caller's own timer is left alone)
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, alarm[0])
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------


def execute_notebook(script: Path, out_notebook: Path, parameters: dict[str, Any], cwd: Path) -> None:
    """Convert the jupytext `script` to a notebook and execute it with papermill into `out_notebook`.

    The executed notebook (with its outputs, or with the error that stopped it) replaces
    `out_notebook` atomically at the end. Raises `NotebookFailed`, `NotebookInterrupted` or
    `DiskFull`."""
    import jupytext
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    nb = jupytext.read(script)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    kernels: list[Any] = []
    failure: NotebookFailed | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp, atomic_path(out_notebook, suffix=".tmp.ipynb") as partial, \
                _forward_sigint(kernels) as interrupts:
            src = Path(tmp) / f"{script.stem}.ipynb"
            jupytext.write(nb, src)
            try:
                pm.execute_notebook(
                    str(src), str(partial), parameters=parameters, kernel_name="python3", cwd=str(cwd),
                    progress_bar=False,
                    stderr_file=sys.stderr,  # the kernel's progress bars show live in the terminal
                    kernel_manager_class=_kernel_manager_class(kernels),
                )
            except PapermillExecutionError as e:
                failure = NotebookFailed(e.ename, e.evalue)
            except Exception as e:  # noqa: BLE001 - a dead kernel after Ctrl-C, or a failed write
                if not interrupts[0]:
                    raise
                failure = NotebookFailed(type(e).__name__, str(e))
            if not partial.is_file() or partial.stat().st_size == 0:
                raise NotebookFailed("NoOutput", "papermill wrote no notebook") from None
        if interrupts[0]:
            raise NotebookInterrupted(failure.evalue if failure else "")
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull.writing(out_notebook) from None
        raise
    finally:
        for km in kernels:
            _dispose(km)
    if failure is not None:
        raise failure
