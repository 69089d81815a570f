"""Atomic file writes and provenance stamps: every artifact is written whole or not at all.

Every file of a run goes through `atomic_path` (a temporary file beside the target, renamed onto it
once complete), so a crash, a kill or a full disk leaves the previous version or nothing, never a
truncated file. A full disk raises `DiskFull`, whose one-line message names the directory and its
free space. Tensor files are byte-deterministic: the same tensors give the same bytes in every
process (safetensors' own header order follows a per-process hash seed).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from tsae_core.version import __version__

_UMASK = os.umask(0)
os.umask(_UMASK)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
TEMP_SUFFIX = ".tmp"
TEMP_PREFIX = ".tsae-tmp."
"""Temporary files are `.tsae-tmp.<name>.<random>.tmp` beside their target. The prefix marks them as
tsae's: a run removes the stale ones it finds at start (`is_own_temporary`) and nothing else, so a
user's own `.draft.tmp` in a run directory is never touched."""
_OWN_TEMPORARY = re.compile(r"^" + re.escape(TEMP_PREFIX) + r".+\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + r"(\.ipynb)?$")


def is_own_temporary(path: str | Path) -> bool:
    """A temporary file that `atomic_path` made (its name, prefix and random part, says so)."""
    return bool(_OWN_TEMPORARY.match(Path(path).name))


class DiskFull(OSError):
    """No space left where a file is written; the message names the directory and its free space."""

    def __init__(self, directory: Path, what: str) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device {what}: {directory} has {free_space_text(directory)} free; "
                                       f"free some space, then rerun the same command to resume")

    @classmethod
    def writing(cls, path: Path) -> DiskFull:
        return cls(path.parent, f"writing {path.name}")

    def __str__(self) -> str:
        return self.strerror


def free_space_text(directory: str | Path) -> str:
    """Free space of the file system holding `directory` (or its nearest existing parent), e.g. '12.5 MB'."""
    d = Path(directory)
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        free = shutil.disk_usage(d).free
    except OSError:
        return "unknown"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if free >= size:
            return f"{free / size:.1f} {unit}"
    return f"{free} bytes"


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _NO_SPACE


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = TEMP_SUFFIX) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on any failure it
    is removed (a full disk raises `DiskFull`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull.writing(path) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp_path, path)
    except OSError as e:
        if is_disk_full(e):
            tmp_path.unlink(missing_ok=True)  # first, so that the free space reported is the real one
            raise DiskFull.writing(path) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN: non-finite floats become null so files stay valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any, stamp: dict[str, Any] | None = None) -> None:
    """Write JSON atomically; `stamp` (see `provenance`) is added under the key `tsae`."""
    if stamp is not None:
        obj = {"tsae": stamp, **obj}
    write_text(path, json.dumps(_finite_or_none(obj), indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot serialise {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def tensor_file_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors encoding of `tensors` (made contiguous, on CPU) with a canonical header.

    safetensors writes its JSON header in a hash order that differs between processes; the header
    is re-encoded here with sorted keys (same entries, same data offsets), so equal tensors give
    equal bytes and equal checksums in every process."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    raw = safetensors_bytes(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    canonical += b" " * (-len(canonical) % 8)  # the data section stays 8-byte aligned
    return struct.pack("<Q", len(canonical)) + canonical + raw[8 + n :]


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Save a byte-deterministic safetensors file atomically; returns its sha256."""
    data = tensor_file_bytes(tensors, metadata)
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def torch_save(path: str | Path, obj: Any) -> None:
    """`torch.save` atomically (serialised in memory first, so a full disk is an `OSError` like any other write)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def code_hash(without: tuple[str, ...] = ()) -> str:
    """Hash of the package's sources: changed code means results must be recomputed. `without` names
    subpackages whose code cannot change the result at hand (e.g. `plots` for an evaluation)."""
    package = Path(__file__).parent
    h = hashlib.sha256()
    for f in sorted(package.rglob("*.py")):
        if f.relative_to(package).parts[0] not in without:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def machine_description() -> dict[str, Any]:
    """What ran a stage: the device torch sees, the CPU cores, the platform and the library versions."""
    import platform

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": device, "cpu_count": os.cpu_count(), "platform": platform.platform(terse=True),
            "python": platform.python_version(), "torch": torch.__version__}


def provenance(config_hash: str | None = None) -> dict[str, Any]:
    """The stamp every JSON carries: tsae version, git commit, creation time, config hash."""
    return {
        "version": __version__,
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config_hash": config_hash,
    }
