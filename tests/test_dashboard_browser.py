"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by `make
browser`, which `make test` runs), driven by Playwright. Pages open from disk with no request to any
host and no console error; the index sorts; a scripted rater fills the blind-rating page, downloads
the JSON, and `tsae ratings` unblinds it.

Without Chromium these tests are skipped, except under `TSAE_REQUIRE_BROWSER=1` (set by `make
test`), where a missing browser is a failure."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.test_dashboard import lm_dashboard  # noqa: F401  (the module fixture: a tiny run with its dashboard)

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-default-apps"]


def _chromium() -> str | None:
    return os.environ.get("TSAE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    required = os.environ.get("TSAE_REQUIRE_BROWSER") == "1"
    path = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if path is None or sync_playwright is None:
        why = "no Chromium (install Debian's chromium: `make browser`)" if path is None else "playwright is not installed"
        if required:
            pytest.fail(f"the browser tests need a browser: {why}")
        pytest.skip(why)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        yield b
        b.close()


class Visit:
    """A page opened from disk, with every request and console problem it caused."""

    def __init__(self, browser, path, **context):
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.requests, self.problems = [], []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")

    def offline_and_clean(self) -> None:
        elsewhere = [u for u in self.requests if not u.startswith(("file://", "data:", "blob:"))]
        assert elsewhere == [], f"requests to other hosts: {elsewhere}"
        assert self.problems == [], self.problems


def test_every_kind_of_page_loads_offline_without_errors(browser, lm_dashboard):  # noqa: F811
    cfg, manifest, _ = lm_dashboard
    d = cfg.run_dir / "dashboard"
    latent = manifest["saes"]["topk"]["pages"][0]
    checks = {
        d / "index.html": lambda p: p.locator("table tbody tr").count() == 2,
        d / "topk" / "index.html": lambda p: p.locator("table.sortable tbody tr").count() > 10,
        d / "topk" / f"{latent}.html": lambda p: p.locator("svg.chart").count() >= 5 and p.locator(".tok.mark").count() >= 1,
        d / "concepts.html": lambda p: p.locator("table.concepts tbody tr").count() == 2,
        d / "rate.html": lambda p: p.locator("section.item").count() == 3 and p.locator("#count").inner_text() == "0 of 3 pairs rated",
    }
    for path, present in checks.items():
        visit = Visit(browser, path)
        visit.offline_and_clean()
        assert present(visit.page), f"{path.name}: key elements missing"
        visit.context.close()


def test_the_index_sorts_by_a_clicked_column(browser, lm_dashboard):  # noqa: F811
    cfg, _, _ = lm_dashboard
    visit = Visit(browser, cfg.run_dir / "dashboard" / "topk" / "index.html")
    page = visit.page
    column = [h.strip() for h in page.locator("table.sortable th").all_inner_texts()].index("firing rate")

    def values():
        return [float(v) for v in page.eval_on_selector_all(
            "table.sortable tbody tr", f"rows => rows.map(r => r.cells[{column}].dataset.v)") if v]

    page.locator("table.sortable th", has_text="firing rate").click()
    first = values()
    assert first == sorted(first, reverse=True) and first[0] > first[-1]
    page.locator("table.sortable th", has_text="firing rate").click()
    assert values() == sorted(first)
    page.check("#pages-only")
    assert page.locator("tbody tr:visible").count() == page.locator("tr[data-page='1']").count()
    visit.offline_and_clean()


def test_blind_rating_round_trip(browser, lm_dashboard, tmp_path, capsys):  # noqa: F811
    """Rate every pair in the page (the variant 5, the baseline 2, the variant preferred), download,
    reload (answers kept), then `tsae ratings` unblinds: the variant's mean is 5, the baseline's 2."""
    from tsae_core.runner import main

    cfg, manifest, _ = lm_dashboard
    key = json.loads((cfg.run_dir / "analysis" / "blind_rating_key.json").read_text())
    visit = Visit(browser, cfg.run_dir / "dashboard" / "rate.html", accept_downloads=True)
    page = visit.page
    page.fill("#rater", "scripted")
    page.dispatch_event("#rater", "change")
    for pair in key["pairs"]:
        variant_side = "A" if pair["A"]["sae"] == pair["variant"] else "B"
        baseline_side = "B" if variant_side == "A" else "A"
        page.check(f"input[name='{pair['id']}-{variant_side}'][value='5']")
        page.check(f"input[name='{pair['id']}-{baseline_side}'][value='2']")
        page.fill(f"#{pair['id']} input[type=text][data-side='{variant_side}']", "doc punctuation")
        page.dispatch_event(f"#{pair['id']} input[type=text][data-side='{variant_side}']", "change")
        page.check(f"input[name='{pair['id']}-prefer'][value='{variant_side}']")
    assert page.locator("#count").inner_text() == "3 of 3 pairs rated"
    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == f"ratings-{manifest['rating_set']}.json"
    page.reload()
    assert page.locator("#count").inner_text() == "3 of 3 pairs rated", "answers survive a reload"
    assert page.input_value("#rater") == "scripted"
    visit.offline_and_clean()

    capsys.readouterr()
    assert main(["ratings", str(cfg.run_dir), str(saved)]) == 0
    printed = capsys.readouterr().out
    assert "consistency" in printed and "+3.00" in printed
    result = json.loads((cfg.run_dir / "analysis" / f"blind_ratings_{manifest['rating_set']}.json").read_text())
    assert result["per_sae"]["consistency"]["mean"] == 5 and result["per_sae"]["topk"]["mean"] == 2
    assert result["per_variant"]["consistency"]["preferred"] == {"variant": 3, "baseline": 0, "same": 0}
    assert result["per_sae"]["consistency"]["labels"][0]["label"] == "doc punctuation"
    assert result["raters"] == ["scripted"]
