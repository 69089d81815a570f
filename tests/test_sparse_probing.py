"""Sparse probing (SAEBench's protocol): the probe finds planted labels and nothing in noise, the
tasks are balanced and split per document, the offline sets hold what they claim, the JSON keeps
SAEBench's layout, and it runs end to end on the synthetic source and on a tiny language model."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from tests.conftest import ci_config
from tests.test_language_model_pipeline import TINY_MODEL
from tsae_core.config import ConfigError, HubProbeDataset
from tsae_core.evals.probing.data import BinaryTask, ProbeSet, compact, exclusive_tasks
from tsae_core.evals.probing.labelled_sets import block_kind, hub_labelled_texts, python_docs_set, split_by_group
from tsae_core.evals.probing.run import (
    SparseProbingData,
    evaluate_sparse_probing,
    mean_pool,
    probe_set,
    probe_task,
    sparse_probing_path,
    sparse_probing_result,
    top_k_by_mean_difference,
)
from tsae_core.sae import SAEConfig
from tsae_core.variants.registry import build_sae

K_VALUES = [1, 2, 5, 10, 20, 50]
SMALL_LM_PROBING = {"probing.train_size": 40, "probing.test_size": 20, "probing.max_classes": 3,
                    "probing.max_documents": 300, "probing.batch_sequences": 32}


def _planted_set(n: int = 400, T: int = 12, F: int = 64, planted: int = 7, seed: int = 0, noise_labels: bool = False) -> ProbeSet:
    """Sparse non-negative codes; latent `planted` fires at a few tokens of positive contexts only, and
    latent 3 is huge at the special first token of positives (which pooling must ignore)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(n, T, F, generator=g) - 1.5)  # ~7% of entries active
    y = (torch.arange(n) % 2).long()
    x[:, :, planted] = 0
    fires = (torch.rand(n, T, generator=g) < 0.5) & (y[:, None] == 1)
    x[:, :, planted] += fires * (1 + torch.rand(n, T, generator=g))
    x[y == 1, 0, 3] = 100.0
    mask = torch.ones(n, T, dtype=torch.bool)
    mask[:, 0] = False
    labels = y[torch.randperm(n, generator=g)] if noise_labels else y
    idx = torch.randperm(n, generator=g)
    tr, te = idx[: n // 2], idx[n // 2 :]
    task = BinaryTask("planted", tr, labels[tr], te, labels[te])
    return ProbeSet("planted", x, mask, torch.zeros(n, T, dtype=torch.bool), torch.zeros(n, T, dtype=torch.long), [task])


# ------------------------------------------------------------------------------------------------ the probe


def test_a_planted_latent_is_found_at_k1_and_special_tokens_are_not_pooled():
    ps = _planted_set()
    pooled = mean_pool(ps.acts_NTD, ps.mask_NT)
    r = probe_task(pooled, ps.tasks[0], K_VALUES, max_iter=1000)
    assert r["top"][0] == 7, "the planted latent has the largest class-mean difference; latent 3 (BOS only) must not"
    assert r[1] >= 0.97 and r["all"] >= 0.95
    # pooling over every token would have put latent 3 first
    everything = ps.acts_NTD.mean(1)
    assert int(top_k_by_mean_difference(everything[ps.tasks[0].train_idx], ps.tasks[0].train_y, 1)[0]) == 3


def test_label_noise_gives_chance():
    ps = _planted_set(noise_labels=True, n=600)
    r = probe_task(mean_pool(ps.acts_NTD, ps.mask_NT), ps.tasks[0], K_VALUES, max_iter=1000)
    for k in K_VALUES:
        assert abs(r[k] - 0.5) < 0.1, f"k={k}: {r[k]}"


def test_mean_difference_ranks_planted_latents_by_effect_and_ties_by_index():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 20, generator=g) * 0.1
    y = (torch.arange(300) % 2).long()
    for latent, effect in ((5, 3.0), (9, -2.0), (1, 1.0)):
        x[y == 1, latent] += effect
    assert top_k_by_mean_difference(x, y, 3).tolist() == [5, 9, 1], "|difference| ranks, whatever its sign"
    tie = torch.zeros(4, 3)
    tie[2:, [0, 2]] = 1.0
    assert top_k_by_mean_difference(tie, torch.tensor([0, 0, 1, 1]), 2).tolist() == [0, 2]


def test_k_above_the_width_is_left_out():
    ps = _planted_set(F=8)
    per = probe_set(mean_pool(ps.acts_NTD, ps.mask_NT), ps, [1, 5, 10], 1000, "sae")
    assert per["sae_top_10_test_accuracy"] == {"planted": None}
    assert per["sae_top_5_test_accuracy"]["planted"] is not None and per["sae_top_latents"]["planted"][0] == 7


# ------------------------------------------------------------------------------------------------ tasks and sets


def test_one_vs_rest_tasks_are_balanced_with_negatives_spread_over_the_other_classes():
    labels = ["a"] * 300 + ["b"] * 200 + ["c"] * 100 + ["d"] * 5
    is_test = [i % 4 == 0 for i in range(len(labels))]
    classes, tasks = exclusive_tasks("toy", labels, is_test, 3, (60, 20), seed=0)
    assert classes == ["a", "b", "c"] and [t.class_name for t in tasks] == classes
    lab = torch.tensor([classes.index(y) if y in classes else -1 for y in labels])
    for c, t in enumerate(tasks):
        for idx, y, size, side in ((t.train_idx, t.train_y, 60, False), (t.test_idx, t.test_y, 20, True)):
            assert len(idx) == size and int(y.sum()) == size // 2, "balanced, full size where the classes allow"
            assert (lab[idx[y == 1]] == c).all() and (lab[idx[y == 0]] != c).all() and (lab[idx] >= 0).all()
            assert all(is_test[i] == side for i in idx.tolist())
            others = torch.bincount(lab[idx[y == 0]], minlength=3)
            assert all(abs(int(others[o]) - size // 4) <= 1 for o in range(3) if o != c), "spread evenly"
    _, two = exclusive_tasks("pair", ["x"] * 50 + ["y"] * 50, [i % 2 == 0 for i in range(100)], 5, (20, 20), 0)
    assert len(two) == 1, "two classes: one task (the other is its mirror)"
    with pytest.raises(ValueError, match=r"class 'x' has 4 positive and 3 negative contexts on the probe-train side.*"
                                         r"probing.max_documents"):
        exclusive_tasks("scarce", ["x"] * 50 + ["y"] * 6, [i % 2 == 1 for i in range(56)], 2, (8, 8), 0)


def test_sampling_is_reproducible_with_a_seed_and_changes_with_another():
    labels = [str(i % 3) for i in range(300)]
    is_test = [i % 5 == 0 for i in range(300)]
    a = exclusive_tasks("s", labels, is_test, 3, (40, 20), seed=1)[1]
    b = exclusive_tasks("s", labels, is_test, 3, (40, 20), seed=1)[1]
    c = exclusive_tasks("s", labels, is_test, 3, (40, 20), seed=2)[1]
    assert all(torch.equal(x.train_idx, y.train_idx) and torch.equal(x.test_y, y.test_y) for x, y in zip(a, b))
    assert not torch.equal(a[0].train_idx, c[0].train_idx)
    used, re = compact(a)
    assert all(torch.equal(used[r.train_idx], t.train_idx) for r, t in zip(re, a))


@pytest.fixture(scope="module")
def docs_sets():
    return {n: python_docs_set(n, 63, 4, max_documents=300) for n in ("python_docs.kind", "python_docs.package", "python_docs.code")}


def test_offline_sets_hold_their_classes_in_full_chunks(docs_sets):
    kind, package, code = (docs_sets[n] for n in ("python_docs.kind", "python_docs.package", "python_docs.code"))
    assert set(kind.labels) == {"topic", "docstring"}
    assert dict(package.class_counts()).keys() >= {"_pydecimal", "asyncio"}, "docstrings by top-level package"
    assert "topic" not in package.labels and all("." not in y for y in package.labels)
    assert set(code.labels) == {"code", "prose"}
    for s in docs_sets.values():
        assert all(len(t) == 63 for t in s.texts), "full chunks only: every class has contexts of one length"
        assert max(Counter(s.groups).values()) <= 4 * (2 if s is code else 1), "at most 4 per document (per class)"
    code_texts = [t for t, y in zip(code.texts, code.labels) if y == "code"]
    prose_texts = [t for t, y in zip(code.texts, code.labels) if y == "prose"]
    assert sum(">>>" in t for t in code_texts) >= 0.6 * len(code_texts) and not any(">>>" in t for t in prose_texts)
    assert block_kind(">>> x = 1\n1") == "code" and block_kind("A sentence. Another one.") == "prose"
    assert block_kind("    indented:\n  code = 1") is None


def test_no_document_lies_on_both_sides_and_tasks_are_balanced(docs_sets):
    for s in docs_sets.values():
        side = split_by_group(s.groups, 0.25, 42)
        by_group: dict[str, set[bool]] = {}
        for g, t in zip(s.groups, side):
            by_group.setdefault(g, set()).add(t)
        assert all(len(v) == 1 for v in by_group.values())
        assert 0.1 < sum(side) / len(side) < 0.45
        _, tasks = exclusive_tasks(s.name, s.labels, side, 3, (40, 20), 42)
        for t in tasks:
            train_docs = {s.groups[i] for i in t.train_idx.tolist()}
            assert train_docs.isdisjoint(s.groups[i] for i in t.test_idx.tolist())
            assert 2 * int(t.train_y.sum()) == len(t.train_y) == 40 and 2 * int(t.test_y.sum()) == len(t.test_y) == 20


def test_hub_loader_reads_a_local_json_file_and_config_checks_names(tmp_path):
    rows = [{"text": f"{w} number {i}", "label": w} for i in range(30) for w in ("apple", "pear")] + [{"text": " ", "label": "x"}]
    f = tmp_path / "fruit.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    texts = hub_labelled_texts("fruit", HubProbeDataset(path="json", data_files=str(f)), cache_dir=tmp_path)
    assert len(texts.texts) == 60 and set(texts.labels) == {"apple", "pear"} and texts.texts[0] == "apple number 0"
    cfg = ci_config(tmp_path, **{"probing.datasets": ["fruit"], "probing.hub": {"fruit": {"path": "json", "data_files": str(f)}}})
    assert cfg.probing.hub["fruit"].data_files == str(f)
    with pytest.raises(ConfigError, match="unknown set 'nope'"):
        ci_config(tmp_path, **{"probing.datasets": ["nope"]})
    with pytest.raises(ValueError, match="no column 'kind'; columns are text, label"):
        hub_labelled_texts("fruit", HubProbeDataset(path="json", data_files=str(f), label_column="kind"), cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def synthetic_probing(harvested, tmp_path_factory):
    """A TopK SAE trained on the CI synthetic run (its own run dir, the shared harvest) and its probing."""
    from tsae_core.train import train_variant

    _, store = harvested
    cfg = ci_config(tmp_path_factory.mktemp("probe"))
    train_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    data = SparseProbingData(cfg, progress=False)
    return cfg, data, evaluate_sparse_probing(cfg, "topk", cfg.run_dir, data, progress=False)


def test_synthetic_probing_writes_saebench_layout(synthetic_probing):
    cfg, data, r = synthetic_probing
    path = sparse_probing_path(cfg.run_dir, "topk")
    assert path.is_file() and json.loads(path.read_text())["eval_key"] == r["eval_key"]
    assert r["eval_type_id"] == "sparse_probing" and r["skipped"] is None
    assert {"random_seed", "dataset_names", "probe_train_set_size", "probe_test_set_size", "context_length", "k_values"} <= set(r["eval_config"])
    assert r["eval_config"]["dataset_names"] == ["synthetic.slow"] and r["eval_config"]["context_length"] == 32
    m = r["eval_result_metrics"]
    assert set(m["llm"]) == {"llm_test_accuracy", *(f"llm_top_{k}_test_accuracy" for k in K_VALUES)}
    assert set(m["sae"]) == {"sae_test_accuracy", *(f"sae_top_{k}_test_accuracy" for k in K_VALUES)}
    assert m["llm"]["llm_top_20_test_accuracy"] is None, "the raw activations have 16 dimensions"
    (detail,) = r["eval_result_details"]
    assert detail["dataset_name"] == "synthetic.slow_results" and detail["sae_top_1_test_accuracy"] == m["sae"]["sae_top_1_test_accuracy"]
    per = r["eval_result_unstructured"]["synthetic.slow_results"]
    classes = data.sets["synthetic.slow"].info["classes"]
    assert set(per["sae_top_5_test_accuracy"]) == set(classes) and len(classes) == 5
    assert all(c.startswith("slow_") for c in classes)
    for k in ("variant", "instance", "seed", "sae_weights_sha256", "eval_key"):
        assert r[k] is not None
    # slow features are visible in pooled codes: far above chance with all latents and with a few
    assert m["sae"]["sae_test_accuracy"] > 0.7 and m["sae"]["sae_top_5_test_accuracy"] > 0.65
    assert m["llm"]["llm_test_accuracy"] > 0.7
    shares = data.sets["synthetic.slow"].info["positive_share"]
    assert all(0.05 < s < 0.95 for s in shares.values())


def test_synthetic_probing_is_reproducible_and_kept(synthetic_probing, monkeypatch):
    cfg, data, r = synthetic_probing
    from tsae_core.evals.probing import run as sparse_probing
    from tsae_core.loading import load_sae

    again = sparse_probing_result(load_sae(cfg.run_dir / "saes" / "topk").eval(), SparseProbingData(cfg, progress=False), cfg)
    assert again["eval_result_details"] == r["eval_result_details"], "same seed, same numbers"

    def fail(*a, **k):
        raise AssertionError("a kept file must not be recomputed")

    monkeypatch.setattr(sparse_probing, "sparse_probing_result", fail)
    kept = evaluate_sparse_probing(cfg, "topk", cfg.run_dir, data, progress=False)
    assert kept["eval_result_metrics"] == r["eval_result_metrics"]
    with pytest.raises(AssertionError, match="recomputed"):
        evaluate_sparse_probing(cfg, "topk", cfg.run_dir, data, force=True, progress=False)
    changed = ci_config(cfg.run.out_dir, **{"probing.k_values": [1, 3]})
    assert sparse_probing.sparse_probing_key(changed, "topk", cfg.run_dir) != r["eval_key"], "other settings: recomputed"
    off = ci_config(cfg.run.out_dir, **{"probing.enabled": False})
    assert evaluate_sparse_probing(off, "topk", off.run_dir)["skipped"] == "probing.enabled is false"


def test_a_set_the_source_cannot_give_is_skipped_with_its_reason(tmp_path):
    cfg = ci_config(tmp_path, **{"probing.datasets": ["python_docs.kind"]})
    data = SparseProbingData(cfg, progress=False)
    sae = build_sae(SAEConfig(architecture="standard", activation="topk", d_in=16, d_sae=32, k=4))
    r = sparse_probing_result(sae, data, cfg)
    assert r["eval_result_metrics"] is None and "a text set cannot be probed on the synthetic source" in r["skipped"]
    assert "python_docs.kind" in r["eval_config"]["skipped_datasets"]


@pytest.fixture(scope="module")
def lm_probing(tmp_path_factory):
    from tsae_core.harvest import harvest
    from tsae_core.store import ActivationStore
    from tsae_core.train import train_variant

    mp = pytest.MonkeyPatch()
    mp.setenv("TSAE_CACHE", str(tmp_path_factory.mktemp("cache")))
    cfg = ci_config(tmp_path_factory.mktemp("lmprobe"), **TINY_MODEL, **SMALL_LM_PROBING, **{"train.steps": 60})
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    train_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    data = SparseProbingData(cfg, progress=False)
    yield cfg, data, evaluate_sparse_probing(cfg, "topk", cfg.run_dir, data, progress=False)
    mp.undo()


def test_tiny_language_model_probes_the_python_docs_sets(lm_probing):
    cfg, data, r = lm_probing
    assert r["eval_config"]["dataset_names"] == ["python_docs.kind", "python_docs.package", "python_docs.code"]
    assert not r["eval_config"]["skipped_datasets"]
    for d in r["eval_result_details"]:
        for k, v in d.items():
            if k != "dataset_name":
                assert v is None or 0.0 <= v <= 1.0
    code = next(d for d in r["eval_result_details"] if d["dataset_name"] == "python_docs.code_results")
    assert code["llm_test_accuracy"] > 0.75, "doctest code against prose is plain to the raw activations"
    ps = data.sets["python_docs.package"]
    assert ps.info["classes"][0] == "_pydecimal" and len(ps.tasks) == 3
    assert ps.acts_NTD.shape[1:] == (64, 32) and not ps.mask_NT[:, 0].any(), "BOS is never pooled"
    assert math.isclose(r["eval_result_metrics"]["llm"]["llm_test_accuracy"],
                        sum(d["llm_test_accuracy"] for d in r["eval_result_details"]) / 3)



def test_an_sae_that_cannot_encode_the_contexts_is_recorded_as_skipped(synthetic_probing):
    cfg, data, _ = synthetic_probing
    sae = build_sae(SAEConfig(architecture="standard", activation="topk", d_in=16, d_sae=32, k=4))

    def broken(*a, **k):
        raise RuntimeError("needs a longer context")

    sae.forward = broken
    r = sparse_probing_result(sae, data, cfg)
    assert r["eval_result_metrics"] is None and r["eval_config"]["dataset_names"] == []
    assert "needs a longer context" in r["skipped"] and "synthetic.slow" in r["eval_config"]["skipped_datasets"]
    assert data.skipped == {}, "the shared data is untouched: other SAEs still probe the set"


def test_the_figure_draws_every_variant_and_the_raw_activation_reference(synthetic_probing, lm_probing, tmp_path):
    from tsae_core.plots.probing import plot_sparse_probing

    _, _, syn = synthetic_probing
    _, _, lm = lm_probing
    assert plot_sparse_probing({"topk": {"skipped": "probing.enabled is false"}}, tmp_path) is None
    png = plot_sparse_probing({"topk": lm, "consistency": lm, "off": {"skipped": "x"}}, tmp_path)
    drawn = json.loads(png.with_suffix(".json").read_text())
    assert png.stat().st_size > 10_000 and drawn["variants"] == ["topk", "consistency"]
    assert drawn["mean"]["topk"][0] == lm["eval_result_metrics"]["sae"]["sae_top_1_test_accuracy"]
    assert drawn["llm"][-1] is None and drawn["llm"][0] == lm["eval_result_metrics"]["llm"]["llm_top_1_test_accuracy"]
    assert set(drawn["datasets"]) == {"python_docs.kind_results", "python_docs.package_results", "python_docs.code_results"}
    assert plot_sparse_probing({"topk": syn}, tmp_path / "one").is_file(), "a single set: the mean panel alone"


def test_probing_json_validates_against_saebench_schema(synthetic_probing, lm_probing):
    from tests.saebench_schema import saebench_schema, schema_errors

    schema = saebench_schema("sparse_probing")
    for _, _, r in (synthetic_probing, lm_probing):
        assert schema_errors(r, schema) == []
        assert r["sae_lens_id"] == "topk" and r["sae_cfg_dict"]["architecture"] == "topk"


def test_summary_rows_name_the_sae_and_carry_both_probes(synthetic_probing):
    from tsae_core.evals.probing import run as sparse_probing

    _, _, r = synthetic_probing
    (row,) = sparse_probing.summary_rows({"topk": r})
    assert row["sae"] == "topk" and row["skipped"] is None
    m = r["eval_result_metrics"]
    assert row["sae_all"] == m["sae"]["sae_test_accuracy"] and row["llm_top_1"] == m["llm"]["llm_top_1_test_accuracy"]
