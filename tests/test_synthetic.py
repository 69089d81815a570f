"""The synthetic benchmark produces the temporal statistics it promises, deterministically."""

from __future__ import annotations

import pytest
import torch

from tsae_core.config import SyntheticConfig
from tsae_core.sources.ground_truth import GroundTruth
from tsae_core.sources.synthetic import CONTEXTS_PER_STREAM, SyntheticSource

CFG = SyntheticConfig(
    d_model=16,
    n_fast=6,
    n_slow=4,
    n_positional=3,
    fast_max_rate=0.2,
    fast_min_rate=0.05,
    slow_min_run=6.0,
    slow_max_run=20.0,
    slow_max_rate=0.3,
    slow_min_rate=0.1,
    positional_width=4,
    positional_rate=0.6,
    positional_max_position=24,
    mean_doc_length=40,
    noise_std=0.01,
)
T = 32


@pytest.fixture(scope="module")
def source() -> SyntheticSource:
    return SyntheticSource(CFG, context_size=T, seed=7)


@pytest.fixture(scope="module")
def data(source: SyntheticSource):
    return source.sequences("train", 0, 1024)


def _firing(data) -> torch.Tensor:
    return data.true_codes_BTG > 0  # (B, T, G)


def test_ground_truth_directions_are_unit_and_roundtrip(source: SyntheticSource, tmp_path) -> None:
    gt = source.ground_truth
    assert gt.directions_GD.shape == (CFG.n_features, CFG.d_model)
    assert torch.allclose(gt.directions_GD.norm(dim=1), torch.ones(CFG.n_features), atol=1e-5)
    assert gt.kinds == ["fast"] * 6 + ["slow"] * 4 + ["positional"] * 3
    assert gt.true_l0 == pytest.approx(float(gt.rates_G.sum()))
    fast = gt.kind_mask("fast")
    assert torch.allclose(gt.rates_G[fast][[0, -1]], torch.tensor([0.2, 0.05]))
    assert torch.allclose(gt.mean_run_G[fast], 1 / (1 - gt.rates_G[fast]))
    gt.save(tmp_path / "gt.safetensors")
    back = GroundTruth.load(tmp_path / "gt.safetensors")
    assert back.kinds == gt.kinds
    for name in ("directions_GD", "rates_G", "mean_run_G", "parent_G", "position_start_G"):
        assert torch.equal(getattr(back, name), getattr(gt, name)), name


def test_shapes_and_dtypes(data) -> None:
    assert data.acts_BTD.shape == (1024, T, CFG.d_model) and data.acts_BTD.dtype == torch.float32
    assert data.true_codes_BTG.shape == (1024, T, CFG.n_features)
    assert data.tokens_BT is None and not data.special_BT.any()
    assert (data.true_codes_BTG >= 0).all()


def test_empirical_rates_match_theory(source: SyntheticSource, data) -> None:
    gt = source.ground_truth
    empirical_G = _firing(data).float().mean(dim=(0, 1))
    rel_G = (empirical_G - gt.rates_G).abs() / gt.rates_G
    assert rel_G[gt.kind_mask("fast")].max() < 0.1
    assert rel_G[gt.kind_mask("slow")].max() < 0.3  # runs make slow samples correlated
    assert rel_G[gt.kind_mask("positional")].max() < 0.15
    assert _firing(data).sum(-1).float().mean() == pytest.approx(gt.true_l0, rel=0.1)


def test_slow_run_lengths_and_autocorrelation(source: SyntheticSource, data) -> None:
    gt = source.ground_truth
    on_BTG = _firing(data)
    same_doc_BT = ~data.doc_start_BT[:, 1:]  # pairs (t, t+1) inside one document
    on_now, on_next = on_BTG[:, :-1] & same_doc_BT[..., None], on_BTG[:, 1:]
    # the mean on-run is 1 / P(off at t+1 | on at t), unbiased by runs cut at document or context ends
    p_stop_G = (on_now & ~on_next).sum((0, 1)) / on_now.sum((0, 1))
    slow = gt.kind_mask("slow")
    assert torch.allclose(1 / p_stop_G[slow], gt.mean_run_G[slow], rtol=0.2)

    x_BTG = on_BTG.float()
    x_BTG = x_BTG - x_BTG.mean((0, 1))
    lag1_G = (x_BTG[:, 1:] * x_BTG[:, :-1]).mean((0, 1)) / x_BTG.pow(2).mean((0, 1))
    assert lag1_G[slow].min() > 0.6
    assert lag1_G[gt.kind_mask("fast")].abs().max() < 0.05


def test_positional_features_fire_only_in_their_window(source: SyntheticSource, data) -> None:
    gt = source.ground_truth
    on_BTG = _firing(data)
    for g in gt.kind_mask("positional").nonzero().flatten().tolist():
        start = int(gt.position_start_G[g])
        inside_BT = (data.position_BT >= start) & (data.position_BT < start + CFG.positional_width)
        assert not on_BTG[..., g][~inside_BT].any()
        assert on_BTG[..., g][inside_BT].float().mean() == pytest.approx(CFG.positional_rate, abs=0.05)


def test_documents_and_positions_are_consistent(data) -> None:
    pos_BT, start_BT = data.position_BT, data.doc_start_BT
    assert torch.equal(pos_BT == 0, start_BT)  # position 0 exactly at document starts
    inner = ~start_BT[:, 1:]
    assert torch.equal(pos_BT[:, 1:][inner], pos_BT[:, :-1][inner] + 1)
    # documents continue from one context into the next of the same stream
    cont_B = torch.arange(len(pos_BT) - 1) % CONTEXTS_PER_STREAM != CONTEXTS_PER_STREAM - 1
    cont_B &= ~start_BT[1:, 0]
    assert cont_B.any()
    assert torch.equal(pos_BT[1:, 0][cont_B], pos_BT[:-1, -1][cont_B] + 1)
    assert start_BT.float().mean() == pytest.approx(1 / CFG.mean_doc_length, rel=0.15)


def test_activations_are_codes_times_directions_plus_noise(source: SyntheticSource, data) -> None:
    recon_BTD = data.true_codes_BTG @ source.ground_truth.directions_GD
    assert (data.acts_BTD - recon_BTD).std() == pytest.approx(CFG.noise_std, rel=0.05)


def test_determinism_and_split_independence(source: SyntheticSource, data) -> None:
    again = SyntheticSource(CFG, context_size=T, seed=7).sequences("train", 0, 1024)
    assert torch.equal(again.acts_BTD, data.acts_BTD)
    # any range (and any batching) gives the same sequences
    part = source.sequences("train", 70, 200)
    assert torch.equal(part.acts_BTD, data.acts_BTD[70:200])
    assert torch.equal(part.position_BT, data.position_BT[70:200])
    batched = torch.cat([b.acts_BTD for b in source.batches(150, 7, "train")])
    assert torch.equal(batched, data.acts_BTD[:150])
    other_split = source.sequences("eval", 0, 64).acts_BTD
    other_seed = SyntheticSource(CFG, context_size=T, seed=8).sequences("train", 0, 64).acts_BTD
    assert not torch.allclose(other_split, data.acts_BTD[:64], atol=1e-3)
    assert not torch.allclose(other_seed, data.acts_BTD[:64], atol=1e-3)


def test_hierarchy_raises_children_rates_while_parent_is_on() -> None:
    cfg = SyntheticConfig(
        d_model=16,
        n_fast=8,
        n_slow=2,
        n_positional=0,
        fast_max_rate=0.05,
        fast_min_rate=0.05,
        slow_max_rate=0.3,
        slow_min_rate=0.3,
        hierarchy_boost=3.0,
        mean_doc_length=60,
    )
    src = SyntheticSource(cfg, context_size=T, seed=1)
    gt = src.ground_truth
    children = (gt.parent_G >= 0).nonzero().flatten()
    assert len(children) == 4 and sorted(gt.parent_G[children].tolist()) == [8, 8, 9, 9]
    on_NG = (src.sequences("train", 0, 1024).true_codes_BTG > 0).reshape(-1, cfg.n_features)
    for c in children.tolist():
        parent_on = on_NG[:, gt.parent_G[c]]
        assert on_NG[parent_on, c].float().mean() == pytest.approx(0.2, rel=0.15)  # 0.05 * (1 + 3)
        assert on_NG[~parent_on, c].float().mean() == pytest.approx(0.05, rel=0.15)
        assert on_NG[:, c].float().mean() == pytest.approx(float(gt.rates_G[c]), rel=0.1)


def test_a_document_keeps_one_id_across_contexts_and_ids_never_repeat(source: SyntheticSource, data) -> None:
    """Streams are cut into consecutive contexts, so most contexts begin inside a document: the store's
    document id follows the document into the next context, and no two documents share one (train and
    eval included), whatever range of sequences is asked for."""
    ids, starts = data.doc_id_BT, data.doc_start_BT
    continues = ~starts[:, 0]
    continues[::CONTEXTS_PER_STREAM] = False  # the first context of a stream has no predecessor here
    assert continues.float().mean() > 0.5, "most contexts begin inside a document"
    prev_last = torch.roll(ids[:, -1], 1)
    assert torch.equal(ids[continues, 0], prev_last[continues]), "a document keeps its id across the context boundary"
    new_doc = starts | (torch.arange(T) == 0)[None, :]
    n_docs = sum(int(new_doc[b].sum()) - int(continues[b]) for b in range(ids.shape[0]))
    assert ids.unique().numel() == n_docs, "every document has an id of its own"
    assert torch.equal(source.sequences("train", 100, 300).doc_id_BT, ids[100:300]), "ids do not depend on the range asked"
    eval_ids = source.sequences("eval", 0, 64).doc_id_BT
    assert not set(eval_ids.unique().tolist()) & set(ids.unique().tolist()), "train and eval never share an id"
