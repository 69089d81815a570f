"""The notebooks as researchers run them: generated .ipynb files name their kernel and language, so
papermill runs one as the README prints it (no `-k`), and the scripts survive a save from Jupyter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tsae_core.config import project_root
from tsae_core.runner import STAGES

NOTEBOOKS = sorted((project_root() / "notebooks").glob("0*.py"))
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def _generate(script: Path, out_dir: Path) -> Path:
    """`jupytext --to ipynb` as `make notebooks` runs it (with the project's jupytext.toml)."""
    out = out_dir / f"{script.stem}.ipynb"
    subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--output", str(out), str(script)],
                   check=True, capture_output=True, cwd=project_root())
    return out


def test_every_generated_notebook_carries_its_kernelspec(tmp_path):
    assert [p.stem for p in NOTEBOOKS] == [s.notebook for s in STAGES], "one notebook per stage, in order"
    for script in NOTEBOOKS:
        meta = json.loads(_generate(script, tmp_path).read_text())["metadata"]
        assert meta.get("kernelspec") == KERNELSPEC, script.name


def test_scripts_are_stable_under_a_save_from_jupyter():
    """Read and written back as Jupyter's jupytext would: nothing but the kernelspec enters the header."""
    import jupytext
    from jupytext.config import load_jupytext_configuration_file

    config = load_jupytext_configuration_file(str(project_root() / "jupytext.toml"))
    for script in NOTEBOOKS:
        nb = jupytext.read(script)
        nb.metadata["language_info"] = {"name": "python", "version": "3.11.0"}  # what a kernel adds on save
        assert jupytext.writes(nb, fmt="py:percent", config=config) == script.read_text(), script.name


def test_papermill_runs_a_generated_notebook_without_kernel_or_language(tmp_path):
    import papermill as pm

    notebook = _generate(project_root() / "notebooks" / "01_harvest.py", tmp_path)
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(notebook), str(out), parameters={"params": "params/ci.yaml", "overrides": {"run.out_dir": str(tmp_path)}},
                        progress_bar=False)
    outputs = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])]
    text = "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "scaling factor" in text and "sequences" in text and "settings (manifest.json)" in text
    # in Jupyter, progress is a widget that ends as a text line, and nothing (no warning either) goes to stderr
    assert "harvest" in text and "100%|" in text
    assert [o for o in outputs if o.get("name") == "stderr"] == []
    assert (tmp_path / "ci" / "activations" / "manifest.json").is_file()


def test_the_runner_asks_its_kernels_for_text_progress(tmp_path):
    """`tsae run` forwards the kernel's stderr to its terminal, where a progress widget would show nothing."""
    import jupytext

    from tsae_core.notebook_exec import execute_notebook

    script = tmp_path / "probe.py"
    script.write_text("# %%\nfrom tsae_core.progress import tqdm\nprint(tqdm.__module__)\n")
    execute_notebook(script, tmp_path / "probe.ipynb", {}, cwd=tmp_path)
    assert jupytext.read(tmp_path / "probe.ipynb").cells[0].outputs[0]["text"] == "tqdm.std\n"


@pytest.mark.parametrize("env", [{}, {"TSAE_PARAMS": "params/ci.yaml", "TSAE_OVERRIDES": '{"train.steps": 7}'}])
def test_parameters_cell_reads_params_from_the_environment_for_nbmake(env, monkeypatch):
    """nbmake passes no parameters: the cell falls back to TSAE_PARAMS / TSAE_OVERRIDES, else the default."""
    import jupytext

    for name in ("TSAE_PARAMS", "TSAE_OVERRIDES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for script in NOTEBOOKS:
        cell = next(c for c in jupytext.read(script).cells if "parameters" in c.metadata.get("tags", []))
        scope: dict = {}
        exec(cell.source, scope)
        assert scope["params"] == env.get("TSAE_PARAMS", "params/default.yaml")
        assert scope["overrides"] == json.loads(env.get("TSAE_OVERRIDES", "{}"))
