"""JupyterLab as a researcher uses it, in headless Chromium (Debian's `chromium`, driven by Playwright).

`make lab` starts the lab on a copy of the project's notebooks, params and lab settings (so the paired
.ipynb files, runs and saves it makes stay out of the checkout), with the venv of this test run. A
percent script opens as a notebook with its kernel chosen and no dialog; 01_harvest and 02_train run
the ci params (fewer training steps) with no error and nothing on stderr, progress drawn as widgets
that end as text lines; after a save and a page reload their outputs are still there and no tab is
unsaved; each notebook is listed once; the scripts are byte-identical to the checkout's. The server
is stopped at the end, whatever happened.

Without Chromium this test is skipped, except under `TSAE_REQUIRE_BROWSER=1` (set by `make test`),
where a missing browser is a failure."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_dashboard_browser import CHROMIUM_FLAGS, _chromium
from tsae_core.config import project_root

ROOT = project_root()
VENV = Path(sys.prefix)  # the venv running the tests: `make test`'s .venv
NOTEBOOKS = ("01_harvest", "02_train")
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook in the active tab
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'  # stderr streams and errors alike


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
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
            pytest.fail(f"the JupyterLab browser test needs a browser: {why}")
        pytest.skip(why)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def lab(tmp_path):
    """`make lab` on a copy of the project; yields (base URL, token, the copy, the log's tail); stops the server."""
    if not (VENV / "bin" / "jupyter-lab").exists():  # `make test` installs it first; run alone, `make lab` does
        # here in the checkout (from the copy, tsae's editable install would move to it); --version: then exit
        done = subprocess.run(["make", "-C", str(ROOT), "lab", f"VENV={VENV}", "LAB_ARGS=--version"], capture_output=True, text=True)
        assert done.returncode == 0, f"`make lab` did not install JupyterLab:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Makefile", "pyproject.toml", "jupytext.toml"):
        shutil.copy2(ROOT / name, project / name)
    for folder, pattern in (("jupyterlab", "*"), ("notebooks", "*.py"), ("params", "*.yaml")):
        (project / folder).mkdir()
        for f in (ROOT / folder).glob(pattern):
            if f.is_file():
                shutil.copy2(f, project / folder / f.name)

    port, token = _free_port(), secrets.token_hex(16)
    overrides = {"run.out_dir": str(project / "runs"), "plot.figures_dir": str(project / "figures"), "train.steps": 30}
    # the user's own Jupyter settings, kernels and workspaces stay out of the way
    env = {**os.environ, **{f"JUPYTER_{d}_DIR": str(tmp_path / "jupyter" / d.lower()) for d in ("CONFIG", "DATA", "RUNTIME")}}
    env.pop("TSAE_PARAMS", None)
    env.pop("TSAE_OVERRIDES", None)
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(
        ["make", "-C", str(project), "lab", f"VENV={VENV}", "PARAMS=params/ci.yaml", f"NB_OVERRIDES={json.dumps(overrides)}",
         # never reinstall tsae from the copy (its editable install must keep pointing at the checkout)
         "-o", f"{VENV}/.tsae-installed",
         f"LAB_ARGS=--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.port_retries=0 "
         f"--IdentityProvider.token={token} --LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def log_tail() -> str:
        return (tmp_path / "lab.log").read_text()[-3000:]

    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"`make lab` exited with {server.returncode}:\n{log_tail()}")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the lab did not answer on port {port} within 90 s:\n{log_tail()}")
                time.sleep(0.5)
        yield base, token, project, log_tail
    finally:
        _stop(server, base, token)
        log.close()


def _stop(server: subprocess.Popen, base: str, token: str) -> None:
    """A clean shutdown stops the kernels too; then make's process group goes, the server with it, even
    when make is gone already (a server busy starting a kernel may not stop on SIGTERM)."""
    try:
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST"), timeout=10)
        server.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
            for _ in range(50):
                server.poll()  # reaps make, which would otherwise keep the group alive
                os.killpg(server.pid, 0)  # raises once nothing of the group is left
                time.sleep(0.2)
        except ProcessLookupError:
            return


def _run_all(page, base: str, token: str, name: str) -> None:
    """Open notebooks/<name>.py, check it is a notebook with its kernel chosen, run every cell, save."""
    from playwright.sync_api import expect

    page.goto(f"{base}/lab/tree/notebooks/{name}.py?token={token}")
    expect(page.locator("#jp-main-dock-panel .lm-TabBar-tab.jp-mod-current")).to_have_text(f"{name}.py", timeout=90_000)
    expect(page.locator(f"{PANEL} .jp-Toolbar-kernelName")).to_have_text("Python 3 (ipykernel)", timeout=90_000)
    page.wait_for_selector(f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    assert page.locator(f"{PANEL} .jp-Cell").count() > 3, f"{name}.py did not open as a notebook"
    assert page.locator(".jp-Dialog").count() == 0, f"{name}: a dialog opened (kernel choice?)"
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
    if name == "02_train":  # a bar is a widget while it runs (17 in turn, a few seconds each)
        page.wait_for_selector(f"{PANEL} .jp-OutputArea-output .widget-hprogress", timeout=120_000)
    # done when the last cell has run (kept in view: the lab renders a cell's prompt only once shown) and the
    # kernel is idle, or as soon as anything reaches stderr (a cell that raised stops the run)
    page.wait_for_function(
        """([panel, stderr]) => {
            const p = document.querySelector(panel);
            if (p.querySelector(stderr)) return true;
            const cells = p.querySelectorAll('.jp-CodeCell');
            const last = cells[cells.length - 1];
            last.scrollIntoView();
            return /\\d/.test(last.querySelector('.jp-InputPrompt').textContent)
                && p.querySelector(".jp-Notebook-ExecutionIndicator[data-status='idle']") !== null;
        }""", arg=[PANEL, STDERR], timeout=150_000, polling=500)
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')", timeout=30_000)


def _outputs(page, name: str) -> list[str]:
    """The text of every output of the notebook now shown, after checking none is a stderr box or an error."""
    cells = page.locator(f"{PANEL} .jp-Cell")
    for i in range(cells.count()):  # the lab renders a cell only once it has been in view
        cells.nth(i).scroll_into_view_if_needed()
    boxes = page.locator(f"{PANEL} {STDERR}").all_text_contents()
    assert boxes == [], f"{name}: stderr or error output: {boxes}"
    # the text content, not the rendered text: the lab skips the layout of a cell out of view, whose
    # innerText then reads "" although its outputs are there
    return page.locator(f"{PANEL} .jp-OutputArea-output").all_text_contents()


def test_notebooks_run_save_and_reload_in_jupyterlab(browser, lab):
    base, token, project, log_tail = lab
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        shown = {}
        for name in NOTEBOOKS:
            _run_all(page, base, token, name)
            shown[name] = _outputs(page, name)
            saved = json.loads((project / "notebooks" / f"{name}.ipynb").read_text())  # the pair keeps the outputs
            outputs = [o for c in saved["cells"] for o in c.get("outputs", [])]
            assert all(c["execution_count"] for c in saved["cells"] if c["cell_type"] == "code"), f"{name}: a cell did not run"
            assert not [o for o in outputs if o["output_type"] == "error" or o.get("name") == "stderr"], f"{name}: {outputs}"
            widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
            assert widgets == [], f"{name}: a progress bar was saved as a widget, not as its last line: {widgets}"
        # 02_train: each SAE's progress bar, a widget while it ran, is now its last line as text; then the table
        assert sum("100%|" in text for text in shown["02_train"]) == 17 and "dead fraction" in shown["02_train"][-1]

        page.reload()
        page.wait_for_selector(f"{PANEL} .jp-OutputArea-output", timeout=90_000)
        time.sleep(3)  # a restored notebook that would be marked unsaved is marked by now
        assert page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0, "a restored notebook is marked unsaved"
        for name in reversed(NOTEBOOKS):  # 02_train is the current tab
            page.locator(".lm-TabBar-tab", has_text=f"{name}.py").first.click()
            page.wait_for_selector(f"{PANEL} .jp-OutputArea-output", timeout=30_000)
            assert _outputs(page, name) == shown[name], f"{name}: outputs not the same after a reload"

        names = page.locator(".jp-DirListing-itemText").all_inner_texts()  # notebooks/, each notebook once
        assert sorted(names) == sorted(p.name for p in (ROOT / "notebooks").glob("*.py")), f"file browser: {names}"
        root = json.load(urllib.request.urlopen(f"{base}/api/contents?token={token}"))
        assert {"runs", "notebooks", "params"} <= {e["name"] for e in root["content"]}, "the lab is not rooted at the project"
        assert problems == [], problems
    except Exception:
        page.screenshot(path=str(project.parent / "failure.png"), full_page=True)
        print(log_tail())
        raise
    finally:
        context.close()
    for script in sorted((ROOT / "notebooks").glob("*.py")):
        assert (project / "notebooks" / script.name).read_bytes() == script.read_bytes(), f"{script.name} changed by the lab"
