"""Harvest writes a checked, resumable store; the store loads exactly what the source produced."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import torch

import tsae_core.harvest as harvest_mod
import tsae_core.store as store_mod
from tsae_core.config import ExperimentConfig, HarvestConfig, RunConfig, SourceConfig, SyntheticConfig
from tsae_core.harvest import PROGRESS, harvest
from tsae_core.io import read_json
from tsae_core.sources.base import SequenceBatch
from tsae_core.sources.factory import make_source
from tsae_core.store import (
    MANIFEST,
    ActivationStore,
    StoreError,
    compute_scaling_factor,
    write_manifest,
    write_shard,
)

SYN = SyntheticConfig(d_model=16, n_fast=12, n_slow=6, n_positional=4, mean_doc_length=40, positional_max_position=24)


def make_cfg(seed: int = 3, name: str = "test", **harvest: object) -> ExperimentConfig:
    h = dict(context_size=32, n_train_sequences=200, n_eval_sequences=64, sequences_per_shard=48) | harvest
    return ExperimentConfig(run=RunConfig(name=name, seed=seed), source=SourceConfig(synthetic=SYN), harvest=HarvestConfig(**h))


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "activations"
    harvest(make_cfg(), out, progress=False)
    return out


def _cat(batches) -> SequenceBatch:
    batches = list(batches)
    return SequenceBatch(
        **{k: None if v is None else torch.cat([getattr(b, k) for b in batches]) for k, v in vars(batches[0]).items()}
    )


def _count_writes(monkeypatch, fail_after: int | None = None) -> list[str]:
    """Wrap harvest's shard writer: record each shard written, optionally crash after some."""
    written: list[str] = []

    def wrapped(directory, split, idx, *args, **kwargs):
        if fail_after is not None and len(written) >= fail_after:
            raise KeyboardInterrupt("simulated interruption")
        written.append(f"{split}_{idx:05d}")
        return write_shard(directory, split, idx, *args, **kwargs)

    monkeypatch.setattr(harvest_mod, "write_shard", wrapped)
    return written


def test_manifest_counts_and_scaling(store_dir: Path) -> None:
    store = ActivationStore.open(store_dir)
    m = store.manifest
    assert (store.d_in, store.context_size, m["dtype"]) == (16, 32, "float32")
    assert m["has_ground_truth"] and m["source"]["kind"] == "synthetic"
    assert m["tsae"]["config_hash"] == m["config_hash"] == harvest_mod.harvest_hash(make_cfg())
    train, ev = store.split("train"), store.split("eval")
    assert (train.n_sequences, train.n_tokens, ev.n_sequences) == (200, 200 * 32, 64)
    assert [s["n_sequences"] for s in m["splits"]["train"]["shards"]] == [48, 48, 48, 48, 8]
    assert [s["file"] for s in m["splits"]["eval"]["shards"]] == ["eval_00000.safetensors", "eval_00001.safetensors"]
    s = store.scaling_factor
    for split in (train, ev):
        norms = torch.cat([b.acts_BTD.norm(dim=-1).flatten() for b in split.batches(50)])
        assert (norms * s).mean() == pytest.approx(math.sqrt(16), rel=1e-4 if split is train else 0.05)


def test_store_roundtrip_equals_source(store_dir: Path) -> None:
    store = ActivationStore.open(store_dir)
    source = make_source(make_cfg())
    for split, n in (("train", 200), ("eval", 64)):
        stored = _cat(store.split(split).batches(30))
        direct = source.sequences(split, 0, n)
        assert stored.acts_BTD.dtype == torch.float32
        assert torch.equal(stored.acts_BTD, direct.acts_BTD)
        assert torch.equal(stored.doc_start_BT, direct.doc_start_BT)
        assert torch.equal(stored.position_BT, direct.position_BT)
        assert not stored.special_BT.any() and stored.tokens_BT is None
        if split == "eval":  # true codes kept for the eval split only, in float16
            assert torch.allclose(stored.true_codes_BTG, direct.true_codes_BTG, rtol=1e-3, atol=1e-3)
        else:
            assert stored.true_codes_BTG is None
    gt = store.ground_truth()
    assert gt.kinds == source.ground_truth.kinds
    assert torch.equal(gt.directions_GD, source.ground_truth.directions_GD)


def _indexed_store(directory: Path, sizes: list[int]) -> ActivationStore:
    """A hand-made store whose sequence i has acts[0, 0] == i, to follow sequences through loaders."""
    records, start = [], 0
    for idx, n in enumerate(sizes):
        acts = torch.randn(n, 4, 3)
        acts[:, 0, 0] = torch.arange(start, start + n, dtype=torch.float32)
        flags = torch.zeros(n, 4, dtype=torch.bool)
        doc_id = torch.arange(start, start + n)[:, None].expand(n, 4)  # one document per sequence
        batch = SequenceBatch(acts, flags, torch.zeros(n, 4, dtype=torch.long), flags, doc_id_BT=doc_id)
        records.append(write_shard(directory, "train", idx, batch, "float32", "test"))
        start += n
    write_manifest(
        directory,
        d_in=3,
        context_size=4,
        dtype="float32",
        scaling_factor=1.0,
        source={"kind": "test"},
        splits={"train": records},
        ground_truth=None,
        config_hash=None,
    )
    return ActivationStore.open(directory)


def _ids(batch: SequenceBatch) -> list[int]:
    return batch.acts_BTD[:, 0, 0].long().tolist()


def test_loader_visits_each_sequence_once_per_epoch(tmp_path: Path, monkeypatch) -> None:
    split = _indexed_store(tmp_path, [10, 10, 10, 10, 7]).split("train")
    reads: list[int] = []
    original = store_mod.StoreSplit.read_shard
    monkeypatch.setattr(store_mod.StoreSplit, "read_shard", lambda self, i: reads.append(i) or original(self, i))
    loader = split.loader(batch_sequences=5, seed=11, shards_in_memory=2)
    assert loader.batches_per_epoch == 9  # 47 // 5: the incomplete last batch is dropped
    epochs = [[_ids(next(loader)) for _ in range(9)] for _ in range(3)]
    seen_everywhere = set()
    for batches in epochs:
        flat = [i for b in batches for i in b]
        assert len(flat) == 45 and len(set(flat)) == 45 and set(flat) <= set(range(47))
        seen_everywhere |= set(flat)
        assert any(len({i // 10 for i in b}) > 1 for b in batches)  # batches mix shards
    assert [i for b in epochs[0] for i in b] != [i for b in epochs[1] for i in b]
    assert len(seen_everywhere) > 45  # other sequences get dropped in other epochs
    assert len(loader._cache.shards) <= 2
    assert len(reads) <= 3 * 2 * 5  # a bounded number of loads: about one per shard per epoch
    # the shuffled one-pass iterator follows the loader's plan for the same (seed, epoch)
    again = [_ids(b) for b in split.batches(5, shuffle=True, seed=11, epoch=1, drop_last=True, shards_in_memory=2)]
    assert again == epochs[1]
    ordered = [i for b in split.batches(5) for i in _ids(b)]
    assert ordered == list(range(47))


def test_resumed_loader_matches_uninterrupted(tmp_path: Path) -> None:
    split = _indexed_store(tmp_path, [10, 10, 10, 10, 7]).split("train")
    reference = split.loader(5, seed=4, shards_in_memory=2)
    expected = [_ids(next(reference)) for _ in range(20)]  # crosses two epoch boundaries
    first = split.loader(5, seed=4, shards_in_memory=2)
    for _ in range(7):
        next(first)
    state = first.state_dict()
    assert state == {"epoch": 0, "batch_in_epoch": 7}
    resumed = split.loader(5, seed=4, shards_in_memory=2)
    resumed.load_state_dict(state)
    assert [_ids(next(resumed)) for _ in range(13)] == expected[7:]


@pytest.mark.parametrize("ahead", [0, 2])
def test_prefetched_batches_and_state_follow_the_loader(tmp_path: Path, ahead: int) -> None:
    """Read ahead in a thread (ahead 2, as on a GPU) or not, the batches are the loader's, in its order,
    and the state names the batch after the last one taken, not the last one read ahead, so a
    checkpoint taken mid-way resumes where training was."""
    from tsae_core.prefetch import Prefetched

    split = _indexed_store(tmp_path, [10, 10, 10, 10, 7]).split("train")
    reference = split.loader(5, seed=4, shards_in_memory=2)
    expected = [_ids(next(reference)) for _ in range(20)]
    with Prefetched(split.loader(5, seed=4, shards_in_memory=2), torch.device("cpu"), ahead=ahead) as batches:
        taken = [_ids(next(batches)) for _ in range(7)]
        state = batches.state_dict()
        if ahead:  # the thread has read on past what was taken
            deadline = time.monotonic() + 5
            while not batches._queue.full() and time.monotonic() < deadline:
                time.sleep(0.01)
            # batches 8 and 9 queued, the next epoch's first in the thread's hand
            assert batches.loader.state_dict() == {"epoch": 1, "batch_in_epoch": 1}
    assert taken == expected[:7] and state == {"epoch": 0, "batch_in_epoch": 7}
    resumed = split.loader(5, seed=4, shards_in_memory=2)
    resumed.load_state_dict(state)
    assert [_ids(next(resumed)) for _ in range(13)] == expected[7:]


def test_prefetch_thread_raises_the_loaders_error_in_the_training_thread(tmp_path: Path, monkeypatch) -> None:
    from tsae_core.prefetch import Prefetched

    split = _indexed_store(tmp_path, [10, 10, 10, 10, 7]).split("train")

    def corrupt(self, i):
        raise StoreError(f"shard {i} is corrupt; delete the store and harvest again")

    monkeypatch.setattr(store_mod.StoreSplit, "read_shard", corrupt)
    with Prefetched(split.loader(5, seed=4), torch.device("cpu"), ahead=2) as batches:
        with pytest.raises(StoreError, match="corrupt; delete the store"):
            next(batches)
    assert not batches._thread.is_alive()


def test_loader_parts_cut_each_batch_into_disjoint_shares(tmp_path: Path) -> None:
    """n loaders with part (i, n) read disjoint slices that make up the one-process loader's batches."""
    split = _indexed_store(tmp_path, [10, 10, 10, 10, 7]).split("train")
    whole = split.loader(6, seed=4, shards_in_memory=2)
    parts = [split.loader(6, seed=4, shards_in_memory=2, part=(i, 3)) for i in range(3)]
    for _ in range(16):  # crosses two epoch boundaries
        assert [i for p in parts for i in _ids(next(p))] == _ids(next(whole))
    assert {tuple(p.state_dict().items()) for p in parts} == {tuple(whole.state_dict().items())}
    with pytest.raises(ValueError, match="cannot be cut into 4 equal parts"):
        split.loader(6, seed=4, part=(0, 4))


def test_missing_store_and_missing_shard(store_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="--only harvest") as e:
        ActivationStore.open(tmp_path / "nowhere")
    assert isinstance(e.value, FileNotFoundError)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in store_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "train_00002.safetensors").unlink()
    with pytest.raises(StoreError, match=r"missing shard .*train_00002\.safetensors.*--force --only harvest"):
        ActivationStore.open(copy)


def test_corrupted_shard_is_detected(store_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in store_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    path = copy / "eval_00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-100:-90] = bytes(b ^ 0xFF for b in data[-100:-90])  # flip bytes inside the tensor data
    path.write_bytes(bytes(data))
    store_mod._VERIFIED.clear()  # as in a fresh process
    store = ActivationStore.open(copy)  # opening only checks presence; loading checks content
    with pytest.raises(StoreError, match=r"corrupted shard .*eval_00001\.safetensors.*checksum mismatch"):
        list(store.split("eval").batches(16))


def test_non_finite_activations_are_refused(tmp_path: Path) -> None:
    acts = torch.randn(2, 4, 3)
    acts[1, 2, 0] = float("nan")
    flags = torch.zeros(2, 4, dtype=torch.bool)
    doc_id = torch.zeros(2, 4, dtype=torch.long)
    batch = SequenceBatch(acts, flags, torch.zeros(2, 4, dtype=torch.long), flags, doc_id_BT=doc_id)
    with pytest.raises(ValueError, match=r"NaN or Inf in activations of split 'train', shard 3 .*train_00003.*synthetic"):
        write_shard(tmp_path, "train", 3, batch, "float32", "synthetic")
    big = SequenceBatch(torch.full((2, 4, 3), 1e6), flags, torch.zeros(2, 4, dtype=torch.long), flags, doc_id_BT=doc_id)
    with pytest.raises(ValueError, match="after casting to float16"):
        write_shard(tmp_path, "train", 0, big, "float16", "synthetic")
    # a stored shard with NaN (and a matching checksum) is caught on load, naming the shard
    store_mod.save_tensors(
        tmp_path / "train_00000.safetensors",
        {
            "acts": acts,
            "doc_start": flags,
            "position": torch.zeros(2, 4, dtype=torch.int32),
            "special": flags.clone(),
        },
    )
    record = {
        "file": "train_00000.safetensors",
        "n_sequences": 2,
        "sha256": store_mod.sha256_file(tmp_path / "train_00000.safetensors"),
    }
    write_manifest(
        tmp_path,
        d_in=3,
        context_size=4,
        dtype="float32",
        scaling_factor=1.0,
        source={},
        splits={"train": [record]},
        ground_truth=None,
        config_hash=None,
    )
    with pytest.raises(StoreError, match=r"NaN or Inf .*train_00000\.safetensors"):
        ActivationStore.open(tmp_path).split("train").load_shard(0)


def test_harvest_reuses_an_up_to_date_store(store_dir: Path, monkeypatch) -> None:
    written = _count_writes(monkeypatch)
    manifest = harvest(make_cfg(name="another-name"), store_dir, progress=False)  # run.name does not matter
    assert written == [] and manifest == read_json(store_dir / MANIFEST)
    assert harvest_mod.harvest_hash(make_cfg(seed=4)) != harvest_mod.harvest_hash(make_cfg())


def test_interrupted_harvest_resumes_identically(store_dir: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "activations"
    _count_writes(monkeypatch, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        harvest(make_cfg(), out, progress=False)
    assert not (out / MANIFEST).exists() and len(read_json(out / PROGRESS)["shards"]) == 3
    written = _count_writes(monkeypatch)
    manifest = harvest(make_cfg(), out, progress=False)
    assert written == ["train_00003", "train_00004", "eval_00000", "eval_00001"]  # only the missing ones
    reference = read_json(store_dir / MANIFEST)
    assert manifest["splits"] == reference["splits"]  # same files, same checksums
    assert manifest["scaling_factor"] == pytest.approx(reference["scaling_factor"], rel=1e-12)

    # losing the manifest and a shard: only that shard is rebuilt, byte for byte
    (out / MANIFEST).unlink()
    (out / "eval_00001.safetensors").unlink()
    written.clear()
    assert harvest(make_cfg(), out, progress=False)["splits"] == reference["splits"]
    assert written == ["eval_00001"]


def test_compute_scaling_factor_ignores_masked_tokens() -> None:
    x_BTD = torch.ones(2, 3, 4)  # ||x|| = 2
    x_BTD[:, 0] = 100.0  # "special" tokens that must not count
    mask_BT = torch.ones(2, 3, dtype=torch.bool)
    mask_BT[:, 0] = False
    assert compute_scaling_factor(x_BTD, mask_BT) == pytest.approx(math.sqrt(4) / 2)


def test_rerunning_harvest_repairs_a_corrupted_shard(store_dir: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "activations"
    harvest(make_cfg(), out, progress=False)
    path = out / "train_00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF
    path.write_bytes(bytes(data))
    store_mod._VERIFIED.clear()  # as in a fresh process
    written = _count_writes(monkeypatch)
    manifest = harvest(make_cfg(), out, progress=False)
    assert written == ["train_00001"]  # the manifest is kept only while every checksum holds
    assert manifest["splits"] == read_json(store_dir / MANIFEST)["splits"]
    written.clear()
    harvest(make_cfg(), out, progress=True, force=True)
    assert len(written) == 7  # force: everything again


def test_every_stored_token_names_its_document_and_old_stores_are_refused(store_dir: Path, tmp_path: Path) -> None:
    store = ActivationStore.open(store_dir)
    batch = next(store.split("train").batches(8))
    assert batch.doc_id_BT is not None and batch.doc_id_BT.dtype == torch.int64
    shard = store.split("train").read_shard(0)
    assert torch.equal(shard["doc_id"][:8], batch.doc_id_BT)
    old = tmp_path / "activations"
    shutil.copytree(store_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": "tsae.activations.v1"}))
    with pytest.raises(StoreError, match=r"older tsae, before every token recorded the id of its document.*re-run the harvest"):
        ActivationStore.open(old)
    no_ids = SequenceBatch(batch.acts_BTD, batch.doc_start_BT, batch.position_BT, batch.special_BT)
    with pytest.raises(ValueError, match="has no document ids"):
        write_shard(tmp_path, "train", 0, no_ids, "float32", "test")
