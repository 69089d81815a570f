"""The random-transformer control: `source.random_init` (a randomly initialised copy of the model,
its own store, the trained model's cache untouched) and `autointerp.control_run` (the control run's
autointerp results beside each SAE's, in the comparison, the figure and the plot fingerprint)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import ci_config
from tests.saebench_schema import saebench_schema, schema_errors
from tests.test_language_model_pipeline import TINY_MODEL
from tsae_core.config import ConfigError
from tsae_core.harvest import harvest, harvest_hash

RANDOM = {**TINY_MODEL, "source.random_init": True}


# ------------------------------------------------------------------ source.random_init on the tiny LM
def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(trained config, random-init config sharing its run directory, the tiny-LM cache, the trained model, the cache's files)."""
    from tsae_core.sources.factory import load_model

    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TSAE_CACHE", str(cache))
    out = tmp_path_factory.mktemp("lm")
    cfg, cfg_random = ci_config(out, **TINY_MODEL), ci_config(out, **RANDOM)  # same run.name: one activations folder
    trained = load_model(cfg)  # trains the tiny model once and caches it
    yield cfg, cfg_random, cache, trained, _files(cache)
    mp.undo()


def test_random_init_is_the_seeds_untrained_model_with_the_same_architecture_and_tokenizer(tiny):
    from tsae_core.sources.factory import load_model, load_tokenizer
    from tsae_core.sources.tinylm import TinyLMSpec, build_model

    cfg, cfg_random, cache, trained, files = tiny
    a, b = load_model(cfg_random), load_model(cfg_random)
    sd_t, sd_a, sd_b = trained.state_dict(), a.state_dict(), b.state_dict()
    assert {k: v.shape for k, v in sd_a.items()} == {k: v.shape for k, v in sd_t.items()}
    assert a.cfg.n_layers == trained.cfg.n_layers and a.cfg.d_model == trained.cfg.d_model == 32
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a), "two builds with the same seed agree"
    start = build_model(TinyLMSpec.of(cfg.source.tinylm)).state_dict()
    assert all(torch.equal(sd_a[k], start[k]) for k in sd_a), "the weights the trained model started from"
    for k in ("embed.W_E", "blocks.0.attn.W_Q", "blocks.0.mlp.W_in", "unembed.W_U"):
        assert (sd_a[k] - sd_t[k]).abs().max() > 1e-2, f"{k} equals the trained model's"
    text = "def f(x):\n    return x"
    assert load_tokenizer(cfg_random).encode(text) == load_tokenizer(cfg).encode(text)
    assert _files(cache) == files, "the trained model's cache entry is neither rewritten nor joined by another"


def test_random_init_harvest_never_reuses_the_trained_store(tiny):
    from tsae_core.stage_outputs import output_problems
    from tsae_core.store import ActivationStore

    cfg, cfg_random, cache, _, files = tiny
    assert harvest_hash(cfg) != harvest_hash(cfg_random)
    folder = cfg.run_dir / "activations"
    trained = harvest(cfg, folder, progress=False)
    eval_trained = next(ActivationStore.open(folder).split("eval").batches(8))
    assert trained["source"]["random_init"] is False
    assert output_problems("harvest", cfg) == []
    assert any("harvested with other parameters" in p for p in output_problems("harvest", cfg_random))

    random = harvest(cfg_random, folder, progress=False)  # the same folder: must not be taken as done
    assert random["config_hash"] == harvest_hash(cfg_random) != trained["config_hash"]
    assert random["source"]["random_init"] is True and output_problems("harvest", cfg_random) == []
    assert random["source"]["spec_hash"] == trained["source"]["spec_hash"], "the same architecture and seed"
    ln_vocab = torch.log(torch.tensor(258.0)).item()
    assert random["source"]["heldout_loss"] > trained["source"]["heldout_loss"]
    assert abs(random["source"]["heldout_loss"] - ln_vocab) < 0.5, "an untrained model is near uniform over 258 bytes"
    eval_random = next(ActivationStore.open(folder).split("eval").batches(8))
    assert torch.equal(eval_random.tokens_BT, eval_trained.tokens_BT), "the same text"
    assert not torch.allclose(eval_random.acts_BTD, eval_trained.acts_BTD, atol=1e-3), "another model's activations"
    assert _files(cache) == files


def test_hooked_transformer_reinitialisation_is_seeded_and_leaves_the_global_rng(tiny):
    from tsae_core.sources.random_init import init_seed, reinitialised_hooked_transformer

    _, _, _, trained, _ = tiny
    state = torch.get_rng_state()
    a, b = (reinitialised_hooked_transformer(trained, init_seed(0)) for _ in range(2))
    c = reinitialised_hooked_transformer(trained, init_seed(1))
    assert torch.equal(torch.get_rng_state(), state)
    assert a.cfg.to_dict() == {**trained.cfg.to_dict(), "init_weights": True, "seed": None}
    assert a.tokenizer is trained.tokenizer
    sa, sb, sc, st = a.state_dict(), b.state_dict(), c.state_dict(), trained.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not torch.equal(sa["embed.W_E"], sc["embed.W_E"])
    assert not torch.allclose(sa["blocks.0.mlp.W_in"], st["blocks.0.mlp.W_in"])
    # transformer-lens's initialisation: unit LayerNorm scales, zero biases
    assert torch.equal(sa["blocks.0.ln1.w"], torch.ones_like(sa["blocks.0.ln1.w"]))
    assert torch.equal(sa["blocks.0.mlp.b_in"], torch.zeros_like(sa["blocks.0.mlp.b_in"]))


def test_random_init_needs_a_language_model():
    with pytest.raises(ConfigError, match="source.random_init"):
        ci_config("/tmp/unused", **{"source.random_init": True})


# ------------------------------------------------------------------ autointerp.control_run
CONTROL_SCORES = {"topk": 0.111, "consistency": 0.222}


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    """The CI run with topk and consistency trained, evaluated and scored by the oracle, and a control
    run `ci-rt` whose autointerp files are the main run's with known scores."""
    from tsae_core.evals.autointerp.evaluation import autointerp_variant
    from tsae_core.evals.core import evaluate_variant
    from tsae_core.store import ActivationStore
    from tsae_core.train import train_variant

    out = tmp_path_factory.mktemp("control")
    cfg = ci_config(out, **{"autointerp.backend": "oracle", "autointerp.n_latents": 16})
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    for name in CONTROL_SCORES:
        train_variant(cfg, name, store, cfg.run_dir, progress=False)
        evaluate_variant(cfg, name, store, cfg.run_dir, progress=False)
        autointerp_variant(cfg, name, store, progress=False, log=lambda _: None)
    control = out / "ci-rt" / "eval" / "autointerp"
    control.mkdir(parents=True)
    for name, score in CONTROL_SCORES.items():
        result = json.loads((cfg.run_dir / "eval" / "autointerp" / f"{name}.json").read_text())
        result["eval_result_metrics"]["autointerp"]["autointerp_score"] = score
        (control / f"{name}.json").write_text(json.dumps(result))
    return out, store


def _control_cfg(out, run: str = "ci-rt"):
    return ci_config(out, **{"autointerp.backend": "oracle", "autointerp.n_latents": 16, "autointerp.control_run": run})


def test_control_scores_reach_the_comparison_and_the_figure(oracle_run, tmp_path):
    from tsae_core.comparison import compare_variants
    from tsae_core.plots import load_run_results, plot_all

    out, _ = oracle_run
    evals, curves, clusters = load_run_results(_control_cfg(out))
    for name, score in CONTROL_SCORES.items():
        attached = evals[name]["autointerp_random_transformer"]
        assert attached["eval_result_metrics"]["autointerp"]["autointerp_score"] == score
        assert attached["control_run"] == "ci-rt" and "eval_result_unstructured" not in attached
        assert evals[name]["autointerp"]["eval_result_metrics"]["autointerp"]["autointerp_score"] != score
    row = next(r for r in compare_variants(evals) if r["metric"] == "autointerp_random_transformer")
    assert (row["variant"], row["baseline"]) == ("consistency", "topk")
    assert row["variant_value"] == 0.222 and row["baseline_value"] == 0.111
    assert row["difference"] == pytest.approx(0.111) and row["verdict"] == "one seed: no interval"

    plot_all(evals, curves, clusters, tmp_path)
    drawn = json.loads((tmp_path / "autointerp.json").read_text())
    assert drawn["random_transformer_run"] == "ci-rt"
    assert {r["sae"]: r["random_transformer"] for r in drawn["rows"]} == CONTROL_SCORES
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert "autointerp_random_transformer" in json.dumps(comparison)


def test_without_a_control_run_nothing_is_attached_and_the_figure_keeps_three_bars(oracle_run, tmp_path):
    from tsae_core.plots import load_run_results, plot_all

    out, _ = oracle_run
    evals, curves, clusters = load_run_results(ci_config(out, **{"autointerp.backend": "oracle", "autointerp.n_latents": 16}))
    assert not any("autointerp_random_transformer" in e for e in evals.values())
    plot_all(evals, curves, clusters, tmp_path)
    drawn = json.loads((tmp_path / "autointerp.json").read_text())
    assert drawn["random_transformer_run"] is None and all("random_transformer" not in r for r in drawn["rows"])


def test_a_missing_control_file_leaves_that_sae_without_the_control(oracle_run, tmp_path):
    from tsae_core.plots import load_run_results, plot_all

    out, _ = oracle_run
    partial = out / "ci-rt-partial" / "eval" / "autointerp"
    partial.mkdir(parents=True)
    shutil.copy(out / "ci-rt" / "eval" / "autointerp" / "topk.json", partial / "topk.json")
    evals, curves, clusters = load_run_results(_control_cfg(out, "ci-rt-partial"))
    assert "autointerp_random_transformer" in evals["topk"] and "autointerp_random_transformer" not in evals["consistency"]
    plot_all(evals, curves, clusters, tmp_path)
    rows = {r["sae"]: r for r in json.loads((tmp_path / "autointerp.json").read_text())["rows"]}
    assert rows["topk"]["random_transformer"] == 0.111 and rows["consistency"]["random_transformer"] is None


def test_a_control_run_that_does_not_exist_stops_with_how_to_make_it(oracle_run):
    from tsae_core.plots import load_run_results

    out, _ = oracle_run
    with pytest.raises(FileNotFoundError, match=r"no run 'no-such-run'.*source.random_init=true"):
        load_run_results(_control_cfg(out, "no-such-run"))
    with pytest.raises(ConfigError, match="autointerp.control_run"):
        _control_cfg(out, "ci")  # this run itself
    with pytest.raises(ConfigError, match="autointerp.control_run"):
        _control_cfg(out, "../elsewhere")


def test_a_control_run_not_harvested_at_random_init_or_judged_otherwise_is_warned(oracle_run, tmp_path):
    from tsae_core.plots import attach_analyses, check_control_run, load_evals

    out, _ = oracle_run
    run = tmp_path / "rt"
    shutil.copytree(out / "ci-rt" / "eval", run / "eval")
    (run / "activations").mkdir()
    shutil.copy(out / "ci" / "activations" / "manifest.json", run / "activations" / "manifest.json")
    topk = run / "eval" / "autointerp" / "topk.json"
    result = json.loads(topk.read_text())
    result["eval_config"]["n_latents"] = 999
    topk.write_text(json.dumps(result))
    evals = attach_analyses(load_evals(out / "ci" / "eval", list(CONTROL_SCORES)), out / "ci" / "eval", run / "eval")
    with pytest.warns(UserWarning, match="random-transformer control"):
        problems = check_control_run(evals, run / "eval")
    assert len(problems) == 2 and "source.random_init" in problems[0] and "topk" in problems[1] and "n_latents" in problems[1]


def test_the_plot_fingerprint_follows_the_control_files(oracle_run):
    from tsae_core.stage_outputs import inputs_fingerprint

    out, _ = oracle_run
    cfg = _control_cfg(out)
    before = inputs_fingerprint("plot", cfg)
    assert before != inputs_fingerprint("plot", ci_config(out, **{"autointerp.backend": "oracle", "autointerp.n_latents": 16}))
    path = out / "ci-rt" / "eval" / "autointerp" / "consistency.json"
    saved = path.read_bytes()
    path.write_bytes(saved.replace(b"0.222", b"0.333"))
    try:
        assert inputs_fingerprint("plot", cfg) != before
    finally:
        path.write_bytes(saved)
    assert inputs_fingerprint("plot", cfg) == before


def test_results_name_the_control_run_instead_of_claiming_it_was_not_run(oracle_run):
    from tsae_core.evals.autointerp.evaluation import autointerp_variant

    out, store = oracle_run
    quiet = {"progress": False, "log": lambda _: None}
    plain = json.loads((out / "ci" / "eval" / "autointerp" / "topk.json").read_text())
    assert "random_transformer" in plain["controls_not_run"] and "random_transformer_control" not in plain
    kept = autointerp_variant(_control_cfg(out), "topk", store, **quiet)
    assert kept["eval_id"] == plain["eval_id"], "only the control run changed: the result is kept, not recomputed"
    assert kept["random_transformer_control"]["run"] == "ci-rt" and "controls_not_run" not in kept
    assert schema_errors(kept, saebench_schema("autointerp")) == []
    on_disk = json.loads((out / "ci" / "eval" / "autointerp" / "topk.json").read_text())
    assert on_disk["random_transformer_control"]["run"] == "ci-rt" and "controls_not_run" not in on_disk
    back = autointerp_variant(ci_config(out, **{"autointerp.backend": "oracle", "autointerp.n_latents": 16}), "topk", store, **quiet)
    assert "random_transformer" in back["controls_not_run"] and back["eval_id"] == plain["eval_id"]
