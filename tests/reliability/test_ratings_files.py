"""`tsae ratings RUN FILE...` on hostile files (issue 31, cases 8, 10, 11 and 12): a file given twice
counts once, a damaged key names the command that rebuilds it, malformed answers are named errors
and only whole ratings 1..5 count, and a file without answers is refused before anything is saved."""

from __future__ import annotations

import json

import pytest

from tests.test_dashboard import _answers, _key
from tsae_core.config import project_root
from tsae_core.dashboard.rating import KEY_FILE
from tsae_core.runner import main


@pytest.fixture
def run(tmp_path):
    """A run directory holding a blind-rating key, made by `tsae run` (its invocation recorded), and
    one rater's file."""
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "analysis").mkdir(parents=True)
    key = _key()
    (run_dir / "analysis" / KEY_FILE).write_text(json.dumps(key))
    params = project_root() / "params" / "ci.yaml"
    (run_dir / "config.json").write_text(json.dumps({"params_file": str(params), "overrides": {
        "run.name": "r", "run.out_dir": str(tmp_path / "runs")}}))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_answers(key, {"consistency": 5, "conv": 2}, 3)))
    return run_dir, key, good


def _ratings(capsys, run_dir, *files):
    code = main(["ratings", str(run_dir), *map(str, files)])
    return code, capsys.readouterr()


def test_the_same_file_twice_counts_once_with_a_warning(run, capsys, tmp_path):
    run_dir, key, good = run
    code, once = _ratings(capsys, run_dir, good)
    assert code == 0
    copy = tmp_path / "copy.json"
    copy.write_text(good.read_text())
    for twice in ((good, good), (good, copy)):
        code, printed = _ratings(capsys, run_dir, *twice)
        assert code == 0 and "counted once" in printed.err, printed.err
        assert printed.out == once.out, "the scores are those of one rater"
        saved = json.loads((run_dir / "analysis" / f"blind_ratings_{key['set']}.json").read_text())
        assert len(saved["raters"]) == 1 and saved["per_sae"]["topk"]["n"] == 6


def test_two_different_files_of_one_named_rater_are_refused(run, capsys, tmp_path):
    run_dir, key, good = run
    later = tmp_path / "later.json"
    later.write_text(json.dumps(_answers(key, {"consistency": 4, "conv": 2}, 3)))
    code, printed = _ratings(capsys, run_dir, good, later)
    assert code == 2 and "both from rater 'x'" in printed.err


@pytest.mark.parametrize("content", ["{}", '{"format": "tsae-blind-ratings-1", "set": "x"', "[]", '{"format": "tsae-blind-ratings-1"}'])
def test_a_damaged_key_is_named_with_the_command_that_rebuilds_it(run, capsys, content):
    run_dir, key, good = run
    (run_dir / "analysis" / KEY_FILE).write_text(content)
    code, printed = _ratings(capsys, run_dir, good)
    assert code == 2 and "Traceback" not in printed.err
    assert f"{run_dir / 'analysis' / KEY_FILE} is damaged" in printed.err, printed.err
    rebuild = f"`tsae run params/ci.yaml --set run.name=r --set run.out_dir={run_dir.parent} --force --only dashboard`"
    assert rebuild in printed.err, printed.err


@pytest.mark.parametrize("change, message", [
    (lambda items, first: items.update({first: 5}), "the answer is 5, not an object"),
    (lambda items, first: items[first].update(A=4), "side A is 4, not an object"),
    (lambda items, first: items[first]["A"].update(rating=True), "rating True is not one of 1..5"),
    (lambda items, first: items[first]["A"].update(rating=4.5), "rating 4.5 is not one of 1..5"),
    (lambda items, first: items[first]["A"].update(rating="4"), "rating '4' is not one of 1..5"),
    (lambda items, first: items[first]["B"].update(label=3), "label 3 is not text"),
])
def test_malformed_answers_are_named_and_only_whole_ratings_count(run, capsys, tmp_path, change, message):
    run_dir, key, good = run
    data = json.loads(good.read_text())
    change(data["items"], next(iter(data["items"])))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    code, printed = _ratings(capsys, run_dir, bad)
    assert code == 2 and message in printed.err and "Traceback" not in printed.err, printed.err


@pytest.mark.parametrize("items", [{}, {"item-001": {}}, {"item-001": {"A": {"label": "x"}, "B": {}}}])
def test_a_file_without_answers_is_refused_and_overwrites_nothing(run, capsys, tmp_path, items):
    run_dir, key, good = run
    assert _ratings(capsys, run_dir, good)[0] == 0
    saved = run_dir / "analysis" / f"blind_ratings_{key['set']}.json"
    before = saved.read_bytes()
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"format": "tsae-blind-ratings-1", "set": key["set"], "rater": "y", "items": items}))
    code, printed = _ratings(capsys, run_dir, empty)
    assert code == 2 and f"{empty}: no answers" in printed.err, printed.err
    assert saved.read_bytes() == before
