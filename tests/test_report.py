"""`tsae report`: a report regenerated from CI-size runs agrees with their JSON, number for number, and
changes when the JSON does. The run is made once for the module through the runner (harvest, train,
evaluate; 2 seeds, 40 steps, topk, consistency and pooled as consistency's control); each test that
edits JSON works on a copy of its JSON files (weights are not copied: the report never reads them)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tsae_core.aggregate import group_by_variant
from tsae_core.comparison import compare_variants, metric_value
from tsae_core.io import read_json, write_json
from tsae_core.metric_table import BY_NAME
from tsae_core.report import build_report, load_run
from tsae_core.report.text import PLAIN_NAMES, plain_name

VARIANTS = {
    "topk": {"activation": "topk", "d_sae": 64, "k": 4},
    "consistency": {"architecture": "consistency", "activation": "topk", "d_sae": 64, "k": 4,
                    "options": {"window": 4, "coefficient": 0.1}},
    "pooled": {"architecture": "pooled", "activation": "topk", "d_sae": 64, "k": 4, "options": {"window": 4},
               "controls": ["consistency"]},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A CI-size run with 2 seeds, made by the runner (harvest, train, evaluate)."""
    from tsae_core.runner import run

    tmp = tmp_path_factory.mktemp("report")
    params = yaml.safe_load(Path("params/ci.yaml").read_text())
    params.pop("sweep", None)
    params["run"] = {"name": "reportci", "seed": 0, "seeds": [0, 1], "out_dir": str(tmp / "runs")}
    params["variants"] = VARIANTS
    params["train"].update(steps=40, log_every=5, warmup_steps=5, checkpoint_every=0)
    params["probing"] = {"enabled": False}
    params["unlearning"] = {"enabled": False}
    (tmp / "reportci.yaml").write_text(yaml.safe_dump(params))
    outcome = run(str(tmp / "reportci.yaml"), {}, ["harvest", "train", "evaluate"])
    return outcome.cfg.run_dir


def _copy(run_dir: Path, dest: Path) -> Path:
    """The run's JSON files (no weights, no stores) under dest/<run name>."""
    target = dest / run_dir.name
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("*.safetensors", "notebooks", "*.ipynb"))
    return target


def _edit(path: Path, edit) -> None:
    data = read_json(path)
    edit(data)
    write_json(path, data)


def _section(report: str, title: str) -> str:
    return report.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _table_rows(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in text.splitlines() if ln.startswith("| ")]
    return rows


def _close(printed: str, value: float | None) -> bool:
    """The printed number is `value` to the precision printed."""
    if value is None:
        return printed == "n/a"
    x = float(printed)
    if "e" in printed:
        return math.isclose(x, value, rel_tol=5e-3)
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return abs(x - value) <= 0.5 * 10 ** -decimals + 1e-12


def _blocks(verdict: str) -> dict[str, list[list[str]]]:
    """variant -> the rows of its verdict table (header first)."""
    out = {}
    for block in verdict.split("#### ")[1:]:
        out[block.split(" ", 1)[0]] = _table_rows(block)
    return out


def test_verdict_table_numbers_equal_the_comparison_rows(run_dir):
    run = load_run(run_dir)
    report = build_report(run)
    rows = compare_variants(run.evals)
    blocks = _blocks(_section(report, "Verdict"))
    assert set(blocks) == {"consistency", "pooled"}
    names = {plain_name(r["metric"]): r["metric"] for r in rows}
    for variant, table in blocks.items():
        header, body = table[0], table[1:]
        assert header[2:4] == ["topk", variant]
        mine = {r["metric"]: r for r in rows if r["variant"] == variant}
        assert len(body) == len(mine)
        for metric_name, _, base, var, diff, ci, seeds, verdict in body:
            r = mine[names[metric_name]]
            assert _close(base, r["baseline_value"]) and _close(var, r["variant_value"]) and _close(diff, r["difference"])
            lo, hi = ci.strip("[]").split(", ")
            assert _close(lo, r["interval"][0]) and _close(hi, r["interval"][1])
            assert seeds == "2 paired" and verdict == r["verdict"]


def test_summary_means_equal_the_evals(run_dir):
    run = load_run(run_dir)
    summary = _section(build_report(run), "Summary")
    columns = {"EV": "explained_variance", "L0 reconstruction": "l0", "dead fraction": "dead_fraction",
               "lag-1 autocorr.": "autocorr_lag1", "shuffled in documents": "autocorr_lag1_doc_shuffled",
               "redundancy": "redundancy", "max cos co-firing": "max_cos_cofiring", "slow persistence": "slow_persistence"}
    groups = group_by_variant(run.evals)
    checked = 0
    for table in summary.split("**")[1:]:
        rows = _table_rows(table)
        if not rows:
            continue
        header = rows[0]
        for row in rows[1:]:
            for title, metric in columns.items():
                if title in header:
                    values = [metric_value(e, BY_NAME[metric]) for e in groups[row[0]]]
                    mean, std = row[header.index(title)].split(" ± ")
                    assert _close(mean, sum(values) / len(values))
                    assert _close(std, float(np.std(values, ddof=1)))
                    checked += 1
    assert checked == 3 * len(columns)


def test_a_changed_eval_json_changes_the_report(run_dir, tmp_path):
    copy = _copy(run_dir, tmp_path)
    before = build_report(load_run(copy))
    path = copy / "eval" / "topk-seed0.json"
    _edit(path, lambda e: e["eval_result_metrics"]["reconstruction_quality"].update(explained_variance=0.123456))
    after = build_report(load_run(copy))
    assert after != before
    other = read_json(copy / "eval" / "topk-seed1.json")["eval_result_metrics"]["reconstruction_quality"]["explained_variance"]
    ev = _table_rows(_section(after, "Summary"))
    topk = next(r for r in ev if r[0] == "topk")
    assert _close(topk[3].split(" ± ")[0], (0.123456 + other) / 2)


def _set_lag1(copy: Path, variant: str, values: list[float]) -> None:
    for seed, v in enumerate(values):
        _edit(copy / "eval" / f"{variant}-seed{seed}.json", lambda e, v=v: e["temporal"].update(autocorr_lag1_mean=v))


def test_the_answer_names_a_prior_better_when_its_json_says_so(run_dir, tmp_path):
    copy = _copy(run_dir, tmp_path)
    topk = [read_json(copy / "eval" / f"topk-seed{s}.json")["temporal"]["autocorr_lag1_mean"] for s in (0, 1)]
    _set_lag1(copy, "consistency", [topk[0] + 0.11, topk[1] + 0.112])  # 2 seeds: t(1) needs a steady difference
    run = load_run(copy)
    row = next(r for r in compare_variants(run.evals) if r["variant"] == "consistency" and r["metric"] == "autocorr_lag1")
    assert row["verdict"] == "better"
    answer = _section(build_report(run), "Answer")
    sentence = next(line for line in answer.splitlines() if line.startswith("- consistency vs topk"))
    assert re.search(r"better on [^;]*lag-1 autocorrelation \+0\.111 \[", sentence)
    assert "lag-1 autocorrelation gain is within what the smoothing control pooled gives" in sentence

    pooled = [read_json(copy / "eval" / f"pooled-seed{s}.json")["temporal"]["autocorr_lag1_mean"] for s in (0, 1)]
    _set_lag1(copy, "consistency", [pooled[0] + 0.11, pooled[1] + 0.112])
    answer = _section(build_report(load_run(copy)), "Answer")
    assert "lag-1 autocorrelation gain exceeds what the smoothing control pooled gives" in answer


def test_nothing_separates_a_prior_whose_numbers_equal_its_baseline(run_dir, tmp_path):
    copy = _copy(run_dir, tmp_path)
    for seed in (0, 1):
        topk = read_json(copy / "eval" / f"topk-seed{seed}.json")
        _edit(copy / "eval" / f"consistency-seed{seed}.json",
              lambda e, t=topk: e.update({k: t[k] for k in ("eval_result_metrics", "temporal", "redundancy", "geometry", "ground_truth")}))
    answer = _section(build_report(load_run(copy)), "Answer")
    assert "Nothing separates consistency from topk at 2 seeds." in answer
    assert "consistency vs topk" not in answer


def test_excluded_and_unmatched_variants_are_named_with_their_reasons(run_dir, tmp_path):
    copy = _copy(run_dir, tmp_path)
    _edit(copy / "eval" / "consistency-seed1.json", lambda e: e.update(health={"healthy": False, "problems": ["made up for the test"]}))
    for seed in (0, 1):
        _edit(copy / "eval" / f"pooled-seed{seed}.json", lambda e: e["eval_result_metrics"]["sparsity"].update(l0_reconstruction=6.0))
    report = build_report(load_run(copy))
    answer = _section(report, "Answer")
    assert "consistency vs topk is excluded, unhealthy (consistency-seed1: made up for the test): no claim." in answer
    assert ("The control pooled vs topk is not at matched L0 (a token's reconstruction reads 6.0 latents against 4.0 for topk "
            "(sparse code: 4.0 against 4.0)): no claim.") in answer
    verdicts = _blocks(_section(report, "Verdict"))
    assert all(r[-1] == "excluded: unhealthy (consistency-seed1: made up for the test)" for r in verdicts["consistency"][1:])
    assert "made up for the test" in _section(report, "Health")


def test_one_seed_gives_differences_without_verdicts(run_dir, tmp_path):
    copy = _copy(run_dir, tmp_path)
    for variant in VARIANTS:
        (copy / "eval" / f"{variant}-seed1.json").unlink()
    answer = _section(build_report(load_run(copy)), "Answer")
    assert "consistency vs topk, one seed, differences only and no verdict: explained variance" in answer
    assert "better on" not in answer and "worse on" not in answer


MECHANISMS = {"mechanisms": {"consistency": {
    "statistic": "lag-1 autocorrelation of the latents matched to slow features", "direction": "higher", "margin": 0.01,
    "knob": "options.coefficient", "variant": {"architecture": "consistency"}, "seeds": [0, 1], "verdict": "acts",
    "steps": 40, "tokens_per_step": 256,
    "levels": [
        {"level": 0.0, "coefficient": 0.0, "values": {"0": 0.31, "1": 0.33}, "mean": 0.32, "std": 0.0141, "explained_variance": 0.75,
         "control_mean": 0.2},
        {"level": 1.0, "coefficient": 0.01, "values": {"0": 0.35, "1": 0.37}, "mean": 0.36, "std": 0.0141,
         "explained_variance": 0.74, "control_mean": 0.21, "paired_difference": 0.04, "interval": [0.04, 0.04]},
        {"level": 10.0, "coefficient": 0.1, "values": {"0": 0.45, "1": 0.49}, "mean": 0.47, "std": 0.0283,
         "explained_variance": 0.7, "control_mean": 0.22, "paired_difference": 0.15, "interval": [0.1229, 0.1771]}]}}}


def test_a_run_with_mechanisms_json_renders_its_table(run_dir, tmp_path):
    copy = _copy(run_dir, tmp_path)
    (copy / "mechanisms.json").write_text(json.dumps(MECHANISMS))
    section = _section(build_report(load_run(copy)), "Mechanism tests")
    assert "**consistency**: lag-1 autocorrelation of the latents matched to slow features" in section and "**acts**" in section
    rows = _table_rows(section)
    assert rows[0][:3] == ["level", "options.coefficient", "statistic (mean ± std)"]
    assert rows[3] == ["×10", "0.1000", "0.4700 ± 0.0283", "0.2200", "0.7000", "+0.1500", "[+0.1229, +0.1771]"]
    answer = _section(build_report(load_run(copy)), "Answer")
    assert answer.strip().startswith("Each prior at 0, 1 and 10 times its coefficient") and "x10 +0.1500 [+0.1229, +0.1771]" in answer
    assert "Acts, moving its target the claimed way" in answer and "consistency (lag-1" in answer
    assert "## Mechanism tests" not in build_report(load_run(run_dir))


def test_setup_states_tokens_passes_machine_and_commit(run_dir):
    run = load_run(run_dir)
    setup = _section(build_report(run), "Setup")
    tokens = 40 * 8 * 32
    assert f"**Tokens each SAE saw**: {tokens:,} (steps × batch tokens), {tokens / 8192:.1f} passes over the 8,192" in setup
    assert "CPU-size" in setup or "cuda" in setup.lower() or "NVIDIA" in setup
    commit = read_json(run_dir / "stages.json")["tsae"]["git_commit"]
    assert commit is None or commit[:12] in setup
    for stage in ("harvest", "train", "evaluate"):
        assert f"| {stage} | " in setup


def test_tsae_report_command_writes_the_report_and_its_figures(run_dir, tmp_path):
    from tsae_core.runner import main

    assert main(["report", str(run_dir), "--out", str(tmp_path / "results")]) == 0
    report = (tmp_path / "results" / f"{run_dir.name}.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {Path(link).name for link in links} == {"comparison.png", "autocorrelation.png", "training_ev.png"}
    for link in links:
        png = tmp_path / "results" / link
        assert png.is_file() and png.with_suffix(".json").is_file()
    drawn = read_json(tmp_path / "results" / run_dir.name / "training_ev.json")["variants"]["topk"]
    curves = [[1 - r["fvu"] for r in map(json.loads, (run_dir / "train" / f"topk-seed{s}.jsonl").read_text().splitlines())]
              for s in (0, 1)]
    assert drawn["ev"] == pytest.approx([(a + b) / 2 for a, b in zip(*curves)])
    assert main(["report", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "results")]) == 1


def test_every_metric_has_plain_words():
    from tsae_core.comparison import METRICS

    assert all(m.name in PLAIN_NAMES or m.name.startswith("gt_recovered_") for m in METRICS)


def test_a_prior_that_only_costs_reconstruction_is_said_so(run_dir, tmp_path):
    copy = _copy(run_dir, tmp_path)
    for seed, cost in ((0, 0.010), (1, 0.0102)):
        topk = read_json(copy / "eval" / f"topk-seed{seed}.json")

        def same_but_ev(e, t=topk, cost=cost):
            e.update({k: json.loads(json.dumps(t[k])) for k in ("eval_result_metrics", "temporal", "redundancy", "geometry", "ground_truth")})
            e["eval_result_metrics"]["reconstruction_quality"]["explained_variance"] -= cost

        _edit(copy / "eval" / f"consistency-seed{seed}.json", same_but_ev)
    answer = _section(build_report(load_run(copy)), "Answer")
    line = next(line for line in answer.splitlines() if line.startswith("- consistency vs topk"))
    assert "nothing separates it from topk but its reconstruction; at a cost in explained variance -1.01 points [" in line
