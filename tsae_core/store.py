"""Sharded activation store: whole sequences in safetensors shards, a checked manifest, a resumable loader.

Layout of a store directory (`runs/<run>/activations/`)::

    manifest.json                 d_in, context_size, dtype, scaling_factor, source, splits + checksums
    ground_truth.safetensors      synthetic sources only (see `GroundTruth`)
    <split>_<idx:05d>.safetensors acts (B,T,D) storage dtype, doc_start (B,T) bool, position (B,T) int32,
                                  special (B,T) bool, doc_id (B,T) int64, [tokens (B,T) int32],
                                  [true_codes (B,T,G) float16]

`doc_id` names the document of every token, unique across the store: documents run across contexts
(most contexts begin inside one), so "the same document" is this id, never a count within a row.

Batches come out as float32 on CPU in raw units: the scaling factor s (E||s x|| = sqrt(d_in) over
non-special tokens) is applied by the SAE, not here. Training shuffles sequences, never tokens.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tsae_core.io import provenance, read_json, save_tensors, sha256_file, write_json
from tsae_core.repair import repair_command, run_dir_of_store
from tsae_core.seeds import derive_seed
from tsae_core.sources.base import SequenceBatch
from tsae_core.sources.ground_truth import GroundTruth

MANIFEST = "manifest.json"
GROUND_TRUTH = "ground_truth.safetensors"
FORMAT = "tsae.activations.v2"
"""v2: per-token document ids (`doc_id`); v1 stores lack them and must be harvested again."""
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _fix(directory: str | Path) -> str:
    """How to repair the store in `directory`: the run's own harvest, forced (`tsae_core.repair`)."""
    return f"re-run the harvest: {repair_command(run_dir_of_store(directory), 'harvest', force=True)}"

_VERIFIED: set[tuple[str, str, int, int]] = set()  # (path, sha256, size, mtime): checked in this process


class StoreError(FileNotFoundError):
    """The activation store is missing, incomplete or corrupted; the message says how to fix it."""


def shard_name(split: str, idx: int) -> str:
    return f"{split}_{idx:05d}.safetensors"


def write_shard(
    directory: str | Path,
    split: str,
    idx: int,
    batch: SequenceBatch,
    dtype: str,
    source: str,
    keep_true_codes: bool = False,
) -> dict[str, Any]:
    """Write one shard atomically; returns its manifest record {file, n_sequences, sha256}.

    Refuses non-finite activations, before and after the cast to the storage dtype (float16
    overflows to inf above 65504).
    """
    name = shard_name(split, idx)
    if batch.doc_id_BT is None:
        raise ValueError(f"shard {idx} of split {split!r} from source {source} has no document ids (doc_id_BT): every "
                         "stored token records its document, so that temporal terms never mistake two documents for one")
    acts = batch.acts_BTD.to(DTYPES[dtype])
    run_dir = run_dir_of_store(directory)
    where = f"NaN or Inf in activations of split {split!r}, shard {idx} ({name})"
    if not torch.isfinite(batch.acts_BTD).all():
        raise ValueError(f"{where} from source {source}: the source produced them; check its settings (model dtype, hook), "
                         f"then re-run the harvest: {repair_command(run_dir, 'harvest', force=True)}")
    if not torch.isfinite(acts).all():
        raise ValueError(f"{where} after casting to {dtype} for source {source}: values beyond {dtype}'s range; store "
                         f"float32: {repair_command(run_dir, 'harvest', force=True, extra={'harvest.dtype': 'float32'})}")
    tensors = {
        "acts": acts,
        # copies: safetensors refuses tensors that share memory (e.g. one all-False mask used twice)
        "doc_start": batch.doc_start_BT.to(torch.bool, copy=True),
        "position": batch.position_BT.to(torch.int32),
        "special": batch.special_BT.to(torch.bool, copy=True),
        "doc_id": batch.doc_id_BT.to(torch.int64, copy=True),
    }
    if batch.tokens_BT is not None:
        tensors["tokens"] = batch.tokens_BT.to(torch.int32)
    if keep_true_codes and batch.true_codes_BTG is not None:
        tensors["true_codes"] = batch.true_codes_BTG.to(torch.float16)
    path = Path(directory) / name
    sha256 = save_tensors(path, tensors)
    _VERIFIED.add(_verify_key(path, sha256))  # just written and hashed: no need to hash it again on read
    return {"file": name, "n_sequences": int(acts.shape[0]), "sha256": sha256}


def write_manifest(
    directory: str | Path,
    *,
    d_in: int,
    context_size: int,
    dtype: str,
    scaling_factor: float,
    source: dict[str, Any],
    splits: dict[str, list[dict[str, Any]]],
    ground_truth: dict[str, str] | None,
    config_hash: str | None,
) -> dict[str, Any]:
    """Write manifest.json (last, so its presence means the store is complete); returns it."""
    manifest = {
        "format": FORMAT,
        "config_hash": config_hash,
        "d_in": d_in,
        "context_size": context_size,
        "dtype": dtype,
        "scaling_factor": scaling_factor,
        "source": source,
        "tensors": {  # what each shard holds (B sequences of T tokens)
            "acts": f"(B, {context_size}, {d_in}) {dtype}",
            "doc_start": "(B, T) bool",
            "position": "(B, T) int32",
            "special": "(B, T) bool",
            "doc_id": "(B, T) int64, the token's document, unique across the store (-1: outside any document)",
            "tokens": "(B, T) int32, language-model sources only",
            "true_codes": "(B, T, G) float16, eval split of sources with a ground truth only",
        },
        "has_ground_truth": ground_truth is not None,
        "ground_truth": ground_truth,
        "splits": {
            name: {
                "n_sequences": sum(s["n_sequences"] for s in shards),
                "n_tokens": sum(s["n_sequences"] for s in shards) * context_size,
                "shards": shards,
            }
            for name, shards in splits.items()
        },
    }
    write_json(Path(directory) / MANIFEST, manifest, stamp=provenance(config_hash))
    return read_json(Path(directory) / MANIFEST)


def compute_scaling_factor(acts: torch.Tensor | Iterable[SequenceBatch], mask_BT: torch.Tensor | None = None) -> float:
    """s = sqrt(d_in) / mean ||x||, the mean over non-special tokens, so that E||s x|| = sqrt(d_in).

    `acts` is a (B,T,D) tensor with an optional (B,T) mask of tokens that count, or an iterable of
    `SequenceBatch`es (their `mask_BT`), accumulated in float64.
    """
    pairs = [(acts, mask_BT)] if isinstance(acts, torch.Tensor) else ((b.acts_BTD, b.mask_BT) for b in acts)
    total, count, d_in = 0.0, 0, 0
    for x_BTD, m_BT in pairs:
        norms = x_BTD.double().norm(dim=-1)
        norms = norms if m_BT is None else norms[m_BT]
        total, count, d_in = total + float(norms.sum()), count + norms.numel(), x_BTD.shape[-1]
    if count == 0 or total <= 0 or not math.isfinite(total):
        raise ValueError(f"cannot compute a scaling factor: {count} tokens with norm sum {total}")
    return math.sqrt(d_in) / (total / count)


class ActivationStore:
    """A harvested activation store, opened through its manifest (`ActivationStore.open(dir)`)."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest

    @classmethod
    def open(cls, directory: str | Path) -> ActivationStore:
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise StoreError(
                f"no activation store at {directory} ({MANIFEST} missing); run the harvest stage first: "
                f"{repair_command(run_dir_of_store(directory), 'harvest')}"
            )
        try:
            manifest = read_json(path)
            _check_manifest(manifest)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StoreError(f"invalid manifest {path}: {type(e).__name__}: {e}; {_fix(directory)}") from None
        store = cls(directory, manifest)
        for name in manifest["splits"]:
            for shard in store.split(name).shards:
                if not (directory / shard["file"]).is_file():
                    raise StoreError(f"missing shard {directory / shard['file']} listed in {path}; {_fix(directory)}")
        return store

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def context_size(self) -> int:
        return int(self.manifest["context_size"])

    @property
    def scaling_factor(self) -> float:
        return float(self.manifest["scaling_factor"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str) -> StoreSplit:
        if name not in self.manifest["splits"]:
            raise StoreError(f"no split {name!r} in {self.directory}; splits: {', '.join(self.splits)}")
        return StoreSplit(self.directory, name, self.manifest["splits"][name]["shards"], self.context_size, self.d_in)

    def ground_truth(self) -> GroundTruth | None:
        """The synthetic source's true features, or None for sources without them."""
        info = self.manifest.get("ground_truth")
        if not self.manifest.get("has_ground_truth") or not info:
            return None
        path = self.directory / info["file"]
        if not path.is_file():
            raise StoreError(f"missing ground truth {path} listed in {self.directory / MANIFEST}; {_fix(self.directory)}")
        verify_file(path, info["sha256"], what="ground truth")
        return GroundTruth.load(path)


def _check_manifest(m: Any) -> None:
    if not isinstance(m, dict):
        raise ValueError(f"expected a JSON object, found {type(m).__name__} ({json.dumps(m)[:40]})")
    if m.get("format") == "tsae.activations.v1":
        raise ValueError("it was harvested by an older tsae, before every token recorded the id of its document "
                         "(which the temporal terms need, since documents run across contexts)")
    if m.get("format") != FORMAT:
        raise ValueError(f"format {m.get('format')!r}, expected {FORMAT!r}")
    if m["dtype"] not in DTYPES or int(m["d_in"]) <= 0 or int(m["context_size"]) <= 0:
        raise ValueError(f"bad dtype/d_in/context_size: {m['dtype']}, {m['d_in']}, {m['context_size']}")
    if not math.isfinite(float(m["scaling_factor"])) or m["scaling_factor"] <= 0:
        raise ValueError(f"bad scaling_factor {m['scaling_factor']}")
    if not isinstance(m["splits"], dict) or not all(isinstance(s, dict) for s in m["splits"].values()):
        raise ValueError("splits must map split names to objects")
    for name, split in m["splits"].items():
        if sum(int(s["n_sequences"]) for s in split["shards"]) != split["n_sequences"]:
            raise ValueError(f"split {name}: shard sizes do not add up to n_sequences")
        for s in split["shards"]:
            if not (isinstance(s["file"], str) and isinstance(s["sha256"], str)):
                raise ValueError(f"split {name}: bad shard record {s}")


def _verify_key(path: Path, sha256: str) -> tuple[str, str, int, int]:
    st = path.stat()  # size and mtime: a file replaced since its check is checked again
    return (str(path.resolve()), sha256, st.st_size, st.st_mtime_ns)


def verify_file(path: Path, sha256: str, what: str = "shard") -> None:
    """Check a file's checksum the first time it is read in this process (or after it changed)."""
    if not path.is_file():
        raise StoreError(f"missing {what} {path} listed in {path.parent / MANIFEST}; {_fix(path.parent)}")
    key = _verify_key(path, sha256)
    if key in _VERIFIED:
        return
    actual = sha256_file(path)
    if actual != sha256:
        raise StoreError(
            f"corrupted {what} {path}: checksum mismatch (sha256 {actual[:16]}..., manifest {sha256[:16]}...); {_fix(path.parent)}"
        )
    _VERIFIED.add(key)


class StoreSplit:
    """One split of a store: its shards, ordered or shuffled batches, and the training loader."""

    def __init__(self, directory: Path, name: str, shards: list[dict[str, Any]], context_size: int, d_in: int) -> None:
        self.directory, self.name, self.shards, self.context_size, self.d_in = Path(directory), name, shards, context_size, d_in
        self.shard_sizes = [int(s["n_sequences"]) for s in shards]

    @property
    def n_sequences(self) -> int:
        return sum(self.shard_sizes)

    @property
    def n_tokens(self) -> int:
        return self.n_sequences * self.context_size

    def read_shard(self, idx: int) -> dict[str, torch.Tensor]:
        """The raw tensors of shard `idx` (storage dtypes), checksum-verified and checked finite."""
        path = self.directory / self.shards[idx]["file"]
        if not path.is_file():
            raise StoreError(f"missing shard {path} of split {self.name!r}; {_fix(self.directory)}")
        verify_file(path, self.shards[idx]["sha256"])
        try:
            tensors = load_file(str(path))
        except Exception as e:  # a truncated or foreign file that happens to match: say which
            raise StoreError(f"unreadable shard {path}: {e}; {_fix(self.directory)}") from None
        if problem := self._shape_problem(idx, tensors):  # a valid file of another run or harvest, checksum updated
            raise StoreError(f"shard {path} does not fit this store: {problem}; {_fix(self.directory)}")
        if not torch.isfinite(tensors["acts"]).all():
            raise StoreError(f"NaN or Inf in activations of shard {path}; {_fix(self.directory)}")
        return tensors

    def _shape_problem(self, idx: int, tensors: dict[str, torch.Tensor]) -> str | None:
        """What differs from the manifest's shapes: n_sequences x context_size (x d_in for the activations)."""
        n, t = self.shard_sizes[idx], self.context_size
        expected = {"acts": (n, t, self.d_in), "doc_start": (n, t), "position": (n, t), "special": (n, t)}
        for name, shape in expected.items():
            if name not in tensors:
                return f"it has no tensor {name!r}"
            if tuple(tensors[name].shape) != shape:
                return (f"its {name} has shape {tuple(tensors[name].shape)}, but the manifest makes it {shape} "
                        f"({n} sequences of {t} tokens" + (f", width {self.d_in})" if name == "acts" else ")"))
        for name in ("tokens", "true_codes"):
            if name in tensors and tuple(tensors[name].shape[:2]) != (n, t):
                return f"its {name} has shape {tuple(tensors[name].shape)}, but the manifest makes it ({n}, {t}, ...)"
        return None

    def load_shard(self, idx: int) -> SequenceBatch:
        t = self.read_shard(idx)
        return _to_batch(t, torch.arange(t["acts"].shape[0]))

    def batches(
        self,
        batch_sequences: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        shards_in_memory: int = 4,
    ) -> Iterator[SequenceBatch]:
        """One pass over the split: in order, or shuffled exactly as the training loader's `epoch`."""
        plan = epoch_plan(self.shard_sizes, seed, epoch, shards_in_memory, shuffle)
        reader = _ShardCache(self, shards_in_memory)
        n = len(plan[0])
        stop = n - n % batch_sequences if drop_last else n
        for lo in range(0, stop, batch_sequences):
            yield reader.gather(plan[0][lo : lo + batch_sequences], plan[1][lo : lo + batch_sequences])

    def loader(self, batch_sequences: int, seed: int, shards_in_memory: int = 4, part: tuple[int, int] = (0, 1)) -> SequenceLoader:
        return SequenceLoader(self, batch_sequences, seed, shards_in_memory, part)


def epoch_plan(
    shard_sizes: list[int], seed: int, epoch: int, shards_in_memory: int, shuffle: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(shard_N, row_N): the order of every sequence in one epoch, from shard sizes alone.

    Shuffled: permute the shards (generator seeded by (seed, epoch)), group them by
    `shards_in_memory`, permute the sequences within each group — a sequence-level shuffle across
    shards with at most `shards_in_memory` shards needed at once.
    """
    sizes = torch.tensor(shard_sizes, dtype=torch.long)
    if not shuffle:
        shard_N = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        return shard_N, torch.cat([torch.arange(int(n)) for n in sizes]) if len(sizes) else shard_N
    g = torch.Generator().manual_seed(derive_seed("loader", seed, epoch))
    order = torch.randperm(len(sizes), generator=g)
    shards, rows = [], []
    for lo in range(0, len(order), shards_in_memory):
        group = order[lo : lo + shards_in_memory]
        shard_N = torch.repeat_interleave(group, sizes[group])
        row_N = torch.cat([torch.arange(int(sizes[s])) for s in group])
        perm = torch.randperm(len(shard_N), generator=g)
        shards.append(shard_N[perm])
        rows.append(row_N[perm])
    return torch.cat(shards), torch.cat(rows)


class _ShardCache:
    """LRU cache of at most `capacity` loaded shards; gathers batches of (shard, row) pairs."""

    def __init__(self, split: StoreSplit, capacity: int) -> None:
        self.split, self.capacity = split, max(1, capacity)
        self.shards: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()

    def get(self, idx: int) -> dict[str, torch.Tensor]:
        if idx in self.shards:
            self.shards.move_to_end(idx)
        else:
            while len(self.shards) >= self.capacity:
                self.shards.popitem(last=False)
            self.shards[idx] = self.split.read_shard(idx)
        return self.shards[idx]

    def gather(self, shard_N: torch.Tensor, row_N: torch.Tensor) -> SequenceBatch:
        parts, where = [], []
        for s in dict.fromkeys(shard_N.tolist()):  # shards in order of first use in the batch
            sel = (shard_N == s).nonzero().squeeze(1)
            parts.append(_to_batch(self.get(s), row_N[sel]))
            where.append(sel)
        inverse = torch.argsort(torch.cat(where))  # back to the plan's order
        batch = SequenceBatch.concat(parts)
        return SequenceBatch(**{k: None if v is None else v[inverse] for k, v in vars(batch).items()})


def _to_batch(t: dict[str, torch.Tensor], rows: torch.Tensor) -> SequenceBatch:
    return SequenceBatch(
        acts_BTD=t["acts"][rows].float(),
        doc_start_BT=t["doc_start"][rows].bool(),
        position_BT=t["position"][rows].long(),
        special_BT=t["special"][rows].bool(),
        tokens_BT=t["tokens"][rows].long() if "tokens" in t else None,
        true_codes_BTG=t["true_codes"][rows].float() if "true_codes" in t else None,
        doc_id_BT=t["doc_id"][rows].long(),
    )


class SequenceLoader:
    """Endless, resumable training batches of whole sequences (incomplete last batches dropped).

    `state_dict()` = {epoch, batch_in_epoch} names the next batch; a loader given that state by
    `load_state_dict` yields exactly the batches an uninterrupted one would have.

    `part=(i, n)`: yield only the i-th of n equal, contiguous slices of every batch of
    `batch_sequences` sequences, so that n processes with the same seed read disjoint sequences
    that together make the batches of one loader; the state is that of the whole loader.
    """

    def __init__(self, split: StoreSplit, batch_sequences: int, seed: int, shards_in_memory: int = 4,
                 part: tuple[int, int] = (0, 1)) -> None:
        if split.n_sequences < batch_sequences:
            raise ValueError(f"split {split.name!r} has {split.n_sequences} sequences, fewer than one batch of {batch_sequences}")
        index, n_parts = part
        if not 0 <= index < n_parts or batch_sequences % n_parts:
            raise ValueError(f"a batch of {batch_sequences} sequences cannot be cut into {n_parts} equal parts (part {index})")
        self.split, self.batch_sequences, self.seed = split, batch_sequences, seed
        self.part = (index, n_parts)
        self.shards_in_memory = shards_in_memory
        self.epoch, self.batch_in_epoch = 0, 0
        self._cache = _ShardCache(split, shards_in_memory)
        self._plan: tuple[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.split.n_sequences // self.batch_sequences

    def __iter__(self) -> SequenceLoader:
        return self

    def __next__(self) -> SequenceBatch:
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        if self._plan is None or self._plan[0] != self.epoch:
            plan = epoch_plan(self.split.shard_sizes, self.seed, self.epoch, self.shards_in_memory)
            self._plan = (self.epoch, plan)
        shard_N, row_N = self._plan[1]
        share = self.batch_sequences // self.part[1]
        lo = self.batch_in_epoch * self.batch_sequences + self.part[0] * share
        batch = self._cache.gather(shard_N[lo : lo + share], row_N[lo : lo + share])
        self.batch_in_epoch += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
