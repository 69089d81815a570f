"""Harvest: run a source once and write its sequences to a sharded, checksummed activation store.

`harvest(cfg, out_dir)` writes the train and eval splits shard by shard, the ground truth (synthetic
sources), the scaling factor and, last, `manifest.json`. It is resumable: every shard is a
deterministic function of (seed, split, shard index), each finished shard is recorded with its
checksum in `.progress.json`, and a re-run keeps the recorded shards that are still intact. With an
up-to-date manifest (same harvest hash) it returns at once.

`harvest(cfg, out_dir, part=(i, n))` writes only the shards whose index is i modulo n (in each split)
and records them in a progress file of its own (`.progress.part-<i>-of-<n>.json`), so that n processes,
or machines sharing the directory, harvest side by side without writing to one file. It writes no
manifest: a final `harvest(cfg, out_dir)` finds the shards the parts wrote (checking each checksum),
writes whatever is missing (a part that never ran), then the manifest with the scaling factor.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tsae_core.config import ExperimentConfig
from tsae_core.io import read_json, sha256_file, write_json
from tsae_core.progress import tqdm
from tsae_core.sources.base import SequenceBatch
from tsae_core.sources.factory import make_source
from tsae_core.sources.ground_truth import GroundTruth
from tsae_core.store import (
    GROUND_TRUTH,
    MANIFEST,
    StoreError,
    StoreSplit,
    compute_scaling_factor,
    shard_name,
    verify_file,
    write_manifest,
    write_shard,
)

PROGRESS = ".progress.json"
PART_PROGRESS = ".progress.part-{index}-of-{parts}.json"
HARVEST_VERSION = 2
"""Bump when the generated data changes for the same config, so old stores are rebuilt."""
_SHARD_RE = re.compile(r"^(train|eval)_\d{5}\.safetensors$")


class Source(Protocol):
    """What harvest needs from a source of activations."""

    kind: str
    ground_truth: GroundTruth | None

    @property
    def d_model(self) -> int: ...

    def describe(self) -> dict[str, Any]: ...

    def sequences(self, split: str, start: int, stop: int, with_true_codes: bool = True) -> SequenceBatch:
        """Sequences [start, stop) of a split, the same whatever range they are asked with."""
        ...


def harvest_hash(cfg: ExperimentConfig) -> str:
    """Hash of what determines the stored data: source, harvest settings and the seed (not run.name).

    `source.random_init` enters only when set, so that a trained model's store keeps the hash it had
    without the option and a random-init store never matches it."""
    d = cfg.to_dict()
    source = {k: v for k, v in d["source"].items() if k != "random_init" or v}
    key = {"source": source, "harvest": d["harvest"], "seed": cfg.run.seed, "version": HARVEST_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def harvest(cfg: ExperimentConfig, out_dir: str | Path, progress: bool = True, force: bool = False,
            part: tuple[int, int] | None = None) -> dict[str, Any]:
    """Write (or complete, or reuse) the activation store in `out_dir`; returns the manifest.

    An existing store of the same harvest hash whose files all pass their checksums is returned as
    is; otherwise intact recorded shards are kept and the rest (re)generated. `force` regenerates all.
    `part=(i, n)`: only the shards of index i modulo n, no manifest (see the module docstring);
    returns {"part": [i, n], "written": .., "kept": .., "shards": {file: record}}.
    """
    out_dir = Path(out_dir)
    h = harvest_hash(cfg)
    if part is not None:
        return _harvest_part(cfg, out_dir, h, part, progress, force)
    done = {} if force else _known_shards(out_dir, h)
    manifest = None if force else _current_manifest(out_dir, h)
    if manifest is not None:
        return manifest
    (out_dir / MANIFEST).unlink(missing_ok=True)  # stale: a crash below must not leave it claiming completeness
    out_dir.mkdir(parents=True, exist_ok=True)

    source = make_source(cfg, progress=progress)
    hc = cfg.harvest
    splits = _write_shards(cfg, out_dir, done, lambda: source, out_dir / PROGRESS, {"harvest_hash": h}, progress)
    _remove_stale_shards(out_dir, {r["file"] for records in splits.values() for r in records})

    ground_truth = None
    if source.ground_truth is not None:
        source.ground_truth.save(out_dir / GROUND_TRUTH)
        ground_truth = {"file": GROUND_TRUTH, "sha256": sha256_file(out_dir / GROUND_TRUTH)}
    train = StoreSplit(out_dir, "train", splits["train"], hc.context_size, source.d_model)
    scaling_factor = compute_scaling_factor(train.batches(64))
    manifest = write_manifest(
        out_dir,
        d_in=source.d_model,
        context_size=hc.context_size,
        dtype=hc.dtype,
        scaling_factor=scaling_factor,
        source=source.describe(),
        splits=splits,
        ground_truth=ground_truth,
        config_hash=h,
    )
    for path in out_dir.glob(PART_PROGRESS.format(index="*", parts="*")):  # the manifest records their shards now
        path.unlink(missing_ok=True)
    return manifest


def _write_shards(cfg: ExperimentConfig, out_dir: Path, done: dict[str, dict[str, Any]], source: Callable[[], Source],
                  progress_file: Path, header: dict[str, Any], progress: bool,
                  part: tuple[int, int] = (0, 1)) -> dict[str, list[dict[str, Any]]]:
    """The shard records of each split (of this part's shards only): intact `done` ones kept, the others
    generated, each new record saved at once to `progress_file` with those of this call."""
    hc, index, n_parts = cfg.harvest, *part
    splits: dict[str, list[dict[str, Any]]] = {}
    recorded: dict[str, dict[str, Any]] = dict(done) if n_parts == 1 else {}
    for split, n in (("train", hc.n_train_sequences), ("eval", hc.n_eval_sequences)):
        splits[split] = []
        n_shards = -(-n // hc.sequences_per_shard)
        desc = f"harvest {split}" + (f" part {index}/{n_parts}" if n_parts > 1 else "")
        for idx in tqdm(range(index, n_shards, n_parts), desc=desc, unit="shard", disable=not progress):
            lo, hi = idx * hc.sequences_per_shard, min(n, (idx + 1) * hc.sequences_per_shard)
            record = done.get(shard_name(split, idx))
            if record is None or not _intact(out_dir, record, hi - lo):
                src = source()
                keep_codes = split == "eval" and src.ground_truth is not None
                batch = src.sequences(split, lo, hi, with_true_codes=keep_codes)
                record = write_shard(out_dir, split, idx, batch, hc.dtype, src.kind, keep_true_codes=keep_codes)
                done[record["file"]] = recorded[record["file"]] = record
                write_json(progress_file, {**header, "shards": recorded})
            recorded[record["file"]] = record
            splits[split].append(record)
    return splits


def _harvest_part(cfg: ExperimentConfig, out_dir: Path, h: str, part: tuple[int, int], progress: bool,
                  force: bool) -> dict[str, Any]:
    index, n_parts = part
    if not 0 <= index < n_parts:
        raise ValueError(f"harvest part {index} of {n_parts} does not exist: parts are 0 to {n_parts - 1}")
    if (out_dir / MANIFEST).is_file() and _read_manifest(out_dir, h) is None:
        (out_dir / MANIFEST).unlink(missing_ok=True)  # another harvest's manifest: it no longer describes the shards
    out_dir.mkdir(parents=True, exist_ok=True)
    done = {} if force else _known_shards(out_dir, h)
    before = dict(done)
    made: list[Source] = []

    def source() -> Source:  # made only if a shard of this part is missing (a model is slow to load)
        if not made:
            made.append(make_source(cfg, progress=progress))
        return made[0]

    progress_file = out_dir / PART_PROGRESS.format(index=index, parts=n_parts)
    splits = _write_shards(cfg, out_dir, done, source, progress_file, {"harvest_hash": h, "part": [index, n_parts]}, progress,
                           part=part)
    mine = {r["file"]: r for records in splits.values() for r in records}
    written = sum(1 for f, r in mine.items() if before.get(f) is not r)
    return {"part": [index, n_parts], "written": written, "kept": len(mine) - written, "shards": mine}


def _read_manifest(out_dir: Path, h: str) -> dict[str, Any] | None:
    """The manifest in `out_dir` if it is readable and was written for harvest hash `h`."""
    try:
        manifest = read_json(out_dir / MANIFEST)
        return manifest if manifest.get("config_hash") == h else None
    except (OSError, ValueError, AttributeError):
        return None


def _current_manifest(out_dir: Path, h: str) -> dict[str, Any] | None:
    """The existing manifest if it was written for this harvest hash and all its files are intact."""
    manifest = _read_manifest(out_dir, h)
    try:
        records = [s for split in manifest["splits"].values() for s in split["shards"]]
        if manifest.get("ground_truth"):
            records.append(manifest["ground_truth"])
        for r in records:  # checksums too, so that re-running the harvest repairs a corrupted store
            verify_file(out_dir / r["file"], r["sha256"])
    except (StoreError, TypeError, KeyError, AttributeError):
        return None
    return manifest


def _known_shards(out_dir: Path, h: str) -> dict[str, dict[str, Any]]:
    """Shard records of an earlier harvest of the same hash: its progress file and its manifest."""
    known: dict[str, dict[str, Any]] = {}
    # every part's progress file too: a final harvest reuses the shards the parts wrote
    for path in [out_dir / PROGRESS, *sorted(out_dir.glob(PART_PROGRESS.format(index="*", parts="*")))]:
        try:
            progress = read_json(path)
            if progress.get("harvest_hash") == h:
                known.update(progress["shards"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # nothing (more) to reuse: those shards are regenerated
    try:  # the manifest of this harvest, last: what it records is the store
        manifest = _read_manifest(out_dir, h)
        if manifest is not None:
            known.update({s["file"]: s for split in manifest["splits"].values() for s in split["shards"]})
    except (KeyError, TypeError, AttributeError):
        pass
    return known


def _intact(out_dir: Path, record: dict[str, Any], n_sequences: int) -> bool:
    path = out_dir / record["file"]
    return record.get("n_sequences") == n_sequences and path.is_file() and sha256_file(path) == record.get("sha256")


def _remove_stale_shards(out_dir: Path, keep: set[str]) -> None:
    """Delete shard files of an earlier layout (e.g. more shards) so the directory matches the manifest."""
    for path in out_dir.iterdir():
        if _SHARD_RE.match(path.name) and path.name not in keep:
            path.unlink()
