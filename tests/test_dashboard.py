"""The feature dashboard: what each page is computed from, the blind-rating key and scores, and the
pages of a tiny language-model run (files, contents, what the rating page hides). The pages in a
real browser are tested in `tests/test_dashboard_browser.py`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tests.conftest import ci_config
from tests.test_language_model_pipeline import TINY_MODEL
from tsae_core.dashboard import observe as ob
from tsae_core.dashboard.rating import RatingsError, load_ratings, make_key, make_pairs, score

# -- what a page is computed from ----------------------------------------------------------------


def test_top_windows_take_each_sequence_maximum_strongest_first():
    acts = torch.tensor([[0.0, 2.0, 3.0, 0.0], [5.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 9.0, 4.0, 0.0]])
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[3, 1] = False  # a special token never counts
    assert ob.top_windows(acts, mask, 5) == [(1, 0), (3, 2), (0, 2)]
    assert ob.top_windows(acts, mask, 2) == [(1, 0), (3, 2)]


def test_window_stops_at_the_marked_tokens_document():
    doc = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 3]])
    w = ob.window(doc, 0, 4, before=3, after=2)
    assert (w.lo, w.hi) == (3, 7)
    w = ob.window(doc, 0, 1, before=1, after=5)
    assert (w.lo, w.hi) == (0, 3)


def test_run_lengths_break_at_documents_and_special_tokens():
    acts = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]])
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 1] = False
    doc_start = torch.zeros(2, 6, dtype=torch.bool)
    doc_start[0, 2] = True  # a new document inside the first run
    assert sorted(ob.run_lengths(acts, mask, doc_start).tolist()) == [1, 1, 1, 2, 2, 2]


def test_run_length_profile_against_the_geometric_law():
    p = 0.3
    prof = ob.run_length_profile(np.array([1, 1, 2, 5, 20]), p, max_run=6)
    assert prof["share"] == pytest.approx([0.4, 0.2, 0, 0, 0.2, 0.2])
    assert sum(prof["iid_share"]) == pytest.approx(1.0)
    assert prof["iid_share"][0] == pytest.approx(1 - p) and prof["iid_share"][-1] == pytest.approx(p**5)
    assert prof["mean"] == pytest.approx(29 / 5) and prof["iid_mean"] == pytest.approx(1 / 0.7)


def test_quantile_samples_come_from_their_bins_and_histogram_counts_every_token():
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(8, 50, generator=g) * (torch.rand(8, 50, generator=g) < 0.3)
    mask = torch.ones(8, 50, dtype=torch.bool)
    bins = ob.quantile_windows(acts, mask, 4, 3, np.random.default_rng(0))
    assert len(bins) == 4 and bins[0]["lo"] == pytest.approx(float(acts[acts > 0].min()))
    for q in bins:
        assert len(q["positions"]) == 3
        for b, t in q["positions"]:
            assert q["lo"] <= float(acts[b, t]) <= q["hi"]
    hist = ob.histogram(acts, mask)
    assert sum(hist["counts"]) + hist["n_zero"] == hist["n_tokens"] == 400
    assert hist["n_zero"] == int((acts == 0).sum())


def test_sample_is_seeded_and_only_alive():
    alive = np.zeros(100, dtype=bool)
    alive[::3] = True
    a, b = ob.sample_alive(alive, 10, 7), ob.sample_alive(alive, 10, 7)
    assert a == b and len(set(a)) == 10 and all(alive[i] for i in a)
    assert ob.sample_alive(alive, 10, 8) != a


def test_closest_feature_of_another_sae_is_an_alive_one():
    mine = ob.unit_rows(torch.tensor([[1.0, 0.0, 0.0]]))
    other = ob.unit_rows(torch.tensor([[1.0, 0.1, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]]))
    assert ob.closest(mine, other, 0)[0] == 0
    g, cos = ob.closest(mine, other, 0, torch.tensor([False, True, True]))
    assert g == 1 and cos == pytest.approx(0.8)
    assert [i for i, _ in ob.nearest(other, 0, 2)] == [1, 2]


# -- blind rating ------------------------------------------------------------------------------------


def _key():
    samples = {"topk": [10, 11, 12], "consistency": [20, 21, 22], "conv": [30, 31, 32]}
    pairs = make_pairs("topk", samples, 3, seed=1)
    return make_key("r", "topk", pairs, {"topk": "a", "consistency": "b", "conv": "c"})


def test_top_contexts_chart_spans_only_the_five_it_draws():
    """A sixth context marked far into its window does not widen the x axis of the five drawn."""
    from tsae_core.dashboard.pages import _top_contexts_chart

    top = [{"marked": 2, "activations": [0.1, 0.5, 1.0, 0.4]} for _ in range(5)]
    top.append({"marked": 30, "activations": [0.0] * 40})
    svg = _top_contexts_chart(top)
    ticks = re.findall(r'class="tk" text-anchor="middle">(-?\d+)</text>', svg)
    assert ticks[0] == "-2" and ticks[-1] == "1", ticks
    assert "#6" not in svg


def test_pairs_put_each_variant_beside_the_baseline_on_random_sides():
    key = _key()
    assert len(key["pairs"]) == 6 and len({p["id"] for p in key["pairs"]}) == 6
    for p in key["pairs"]:
        assert {p["A"]["sae"], p["B"]["sae"]} == {"topk", p["variant"]}
    assert {p["A"]["sae"] for p in key["pairs"]} != {"topk"}, "the baseline is not always on side A"
    assert _key()["set"] == key["set"], "the same pairs and weights give the same set id"


def _answers(key, variant_rating, baseline_rating, prefer_variant=True):
    items = {}
    for p in key["pairs"]:
        side_of = {p["A"]["sae"]: "A", p["B"]["sae"]: "B"}
        items[p["id"]] = {side_of[p["variant"]]: {"rating": variant_rating[p["variant"]], "label": "quotes"},
                          side_of["topk"]: {"rating": baseline_rating, "label": ""},
                          "prefer": side_of[p["variant"]] if prefer_variant else side_of["topk"]}
    return {"format": "tsae-blind-ratings-1", "set": key["set"], "rater": "x", "items": items}


def test_scores_unblind_each_side(tmp_path):
    key = _key()
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_answers(key, {"consistency": 5, "conv": 2}, 3)))
    result = score(key, load_ratings([path], key))
    assert result["per_sae"]["topk"]["mean"] == 3 and result["per_sae"]["topk"]["n"] == 6
    assert result["per_sae"]["consistency"]["mean"] == 5 and result["per_sae"]["consistency"]["share_4_or_5"] == 1
    assert result["per_variant"]["consistency"]["mean_difference"] == pytest.approx(2)
    assert result["per_variant"]["conv"]["mean_difference"] == pytest.approx(-1)
    assert result["per_variant"]["conv"]["preferred"] == {"variant": 3, "baseline": 0, "same": 0}
    lo, hi = result["per_variant"]["conv"]["variant_share_interval"]
    assert 0.4 < lo < 0.5 and hi == 1.0  # Wilson, 3 of 3
    assert result["per_sae"]["consistency"]["labels"][0]["label"] == "quotes"


def test_bootstrap_interval_covers_the_mean():
    from tsae_core.dashboard.rating import bootstrap_interval

    values = np.array([1, 2, 3, 4, 5, 3, 4, 2], dtype=float)
    lo, hi = bootstrap_interval(values)
    assert lo < values.mean() < hi and hi - lo < 2.5
    assert bootstrap_interval(np.array([3.0])) is None


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(set="0123456789ab"), "rated on another dashboard"),
    (lambda d: d.update(format="other"), "not a tsae ratings file"),
    (lambda d: d["items"].update({"item-999": {}}), "not on this run's rating page"),
    (lambda d: next(iter(d["items"].values()))["A"].update(rating=7), "is not one of 1..5"),
])
def test_bad_ratings_files_are_named(tmp_path, change, message):
    key = _key()
    data = _answers(key, {"consistency": 5, "conv": 2}, 3)
    change(data)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RatingsError, match=message):
        load_ratings([path], key)


# -- the pages of a tiny language-model run ------------------------------------------------------

VARIANTS = {"topk": {"activation": "topk", "d_sae": 64, "k": 4},
            "consistency": {"architecture": "consistency", "activation": "topk", "d_sae": 64, "k": 4,
                            "options": {"window": 4, "coefficient": 0.01}}}
DASHBOARD = {"dashboard.n_features": 5, "dashboard.n_concepts": 2, "dashboard.rating_pairs": 3, "dashboard.top_contexts": 4,
             "dashboard.max_sequences": 48}


@pytest.fixture(scope="module")
def lm_dashboard(tmp_path_factory):
    from tsae_core.dashboard import build_dashboard
    from tsae_core.evals.cluster.run import cluster_run_variant
    from tsae_core.evals.core import evaluate_variant
    from tsae_core.harvest import harvest
    from tsae_core.sources.factory import load_tokenizer
    from tsae_core.store import ActivationStore
    from tsae_core.train import train_variant

    mp = pytest.MonkeyPatch()
    mp.setenv("TSAE_CACHE", str(tmp_path_factory.mktemp("cache")))
    cfg = ci_config(tmp_path_factory.mktemp("dash"), **TINY_MODEL, **DASHBOARD, variants=VARIANTS, sweep={})
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    tokenizer = load_tokenizer(cfg)
    for name in VARIANTS:
        train_variant(cfg, name, store, cfg.run_dir, progress=False)
        evaluate_variant(cfg, name, store, cfg.run_dir, progress=False)
        cluster_run_variant(cfg, name, store, cfg.run_dir, tokenizer, progress=False)
    manifest = build_dashboard(cfg, progress=False)
    yield cfg, manifest, store
    mp.undo()


def _text(path):
    return path.read_text(encoding="utf-8")


def test_every_sae_gets_an_index_and_its_sampled_pages(lm_dashboard):
    from safetensors.torch import load_file

    from tsae_core.evals.core import latents_path

    cfg, manifest, _ = lm_dashboard
    d = cfg.run_dir / "dashboard"
    assert manifest["baseline"] == "topk"
    for name in VARIANTS:
        pages = manifest["saes"][name]["pages"]
        assert len(pages) >= 5 and all((d / name / f"{i}.html").is_file() for i in pages)
        alive = load_file(str(latents_path(cfg.run_dir, name)))["alive"]
        assert sum(bool(alive[i]) for i in pages) >= 5, "the sample is drawn among alive latents"
        rows = re.findall(r'<tr data-page="([01])">', _text(d / name / "index.html"))
        assert len(rows) == int(alive.sum()) and rows.count("1") == len(pages)
    index = _text(d / "index.html")
    assert all(f'href="{n}/index.html"' in index for n in VARIANTS) and "rate.html" in index and "concepts.html" in index
    concepts = _text(d / "concepts.html")
    assert concepts.count("<tr>") == 1 + 2 and all(f"<th class=l>{n}</th>" in concepts for n in VARIANTS)


def test_a_feature_page_shows_its_contexts_and_profiles(lm_dashboard):
    """The top context's number is the latent's largest activation over the evaluated tokens,
    recomputed here by encoding the same sequences."""
    from tsae_core.evals.core import eval_batches
    from tsae_core.loading import load_sae

    cfg, manifest, store = lm_dashboard
    name, latent = "consistency", manifest["saes"]["consistency"]["pages"][0]
    html = _text(cfg.run_dir / "dashboard" / name / f"{latent}.html")
    for panel in ("activation histogram", "activation along the top 5 contexts", "autocorrelation by lag", "run lengths",
                  "position profile", "Top-activating contexts", "Samples by activation quantile", "Decoder neighbours",
                  "closest alive feature in every other SAE", "Logit effects", "lag-1 autocorrelation", "cluster:"):
        assert panel in html, panel
    assert html.count("<svg") >= 5 and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    sae = load_sae(cfg.run_dir / "saes" / name)
    best = 0.0
    with torch.no_grad():
        for b in eval_batches(store, cfg, max_sequences=cfg.dashboard.max_sequences):
            f = sae(b.acts_BTD, b.mask_BT, b.doc_start_BT, b.position_BT).features[..., latent]
            best = max(best, float((f * b.mask_BT).max()))
    shown = [float(v) for v in re.findall(r'<div class="ctx"><span class="v">([0-9.]+)</span>', html)]
    assert shown and shown[0] == pytest.approx(best, abs=5.1e-4)  # the page prints 3 decimals
    assert shown[: cfg.dashboard.top_contexts] == sorted(shown[: cfg.dashboard.top_contexts], reverse=True) or len(shown) < 2
    assert html.count('class="tok mark"') + html.count('class="tok mark sp"') >= len(shown)


def test_the_rating_page_names_no_sae_and_the_key_stays_outside(lm_dashboard):
    cfg, manifest, _ = lm_dashboard
    d = cfg.run_dir / "dashboard"
    html = _text(d / "rate.html")
    markup = re.sub(r"<(style|script)>.*?</\1>", "", html, flags=re.S)  # the page's own style sheet and script
    outside_contexts = re.sub(r'<div class="ctx">.*?</div>', "", markup, flags=re.S)
    for name in VARIANTS:
        assert name not in outside_contexts
    assert "<a " not in markup and not re.search(r"#\d+", outside_contexts), "no link to a feature page, no latent number"
    assert html.count('class=item id="item-') == 3
    key = json.loads(_text(cfg.run_dir / "analysis" / "blind_rating_key.json"))
    assert key["set"] == manifest["rating_set"] and f'data-set="{key["set"]}"' in html
    assert not list(d.rglob("*key*")), "the key is not in the folder a rater opens"
    assert {p["variant"] for p in key["pairs"]} == {"consistency"}


def test_stage_outputs_notice_a_dashboard_of_other_weights(lm_dashboard):
    from tsae_core.io import read_json, write_json
    from tsae_core.stage_outputs import output_problems

    cfg, _, _ = lm_dashboard
    assert output_problems("dashboard", cfg) == []
    path = cfg.run_dir / "dashboard" / "manifest.json"
    original = read_json(path)
    changed = json.loads(json.dumps(original))
    changed["saes"]["topk"]["sae_weights_sha256"] = "0" * 64
    write_json(path, changed)
    try:
        assert "does not show the SAE now in" in output_problems("dashboard", cfg)[0]
    finally:
        write_json(path, original)
    assert output_problems("dashboard", cfg) == []
