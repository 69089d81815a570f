"""A run cleans up only what tsae wrote (issue 31, case 7): a killed writer's temporary file goes, a
user's own `.draft.tmp` stays; and a run never goes into a system folder."""

from __future__ import annotations

import pytest

from tests.reliability.conftest import write_params
from tsae_core.config import ConfigError, load_config
from tsae_core.io import atomic_path
from tsae_core.run_lock import run_lock


def test_a_users_tmp_files_survive_while_a_killed_writers_temporary_is_removed(tmp_path):
    cfg = load_config(write_params(tmp_path))
    run_dir = cfg.run_dir
    (run_dir / "eval").mkdir(parents=True)
    mine = [run_dir / ".draft.tmp", run_dir / "eval" / ".notes.tmp", run_dir / "eval" / ".x.abcdefgh.tmp.ipynb"]
    for path in mine:
        path.write_text("my own notes")
    writer = atomic_path(run_dir / "eval" / "topk.json")  # a write that a kill stops half-way
    left_behind = writer.__enter__()
    left_behind.write_text("{half")

    with run_lock(run_dir):  # what `tsae run` does before any stage
        pass

    assert not left_behind.exists(), "tsae's own temporary file is removed"
    assert all(p.read_text() == "my own notes" for p in mine), "files tsae did not write are left alone"


@pytest.mark.parametrize("where", [{"run": {"name": "etc", "out_dir": "/"}}, {"run": {"name": "mine", "out_dir": "/"}},
                                   {"run": {"name": "tiny", "out_dir": "/usr/lib"}}])
def test_a_system_folder_is_refused_as_the_run_directory(tmp_path, where):
    params = write_params(tmp_path)
    with pytest.raises(ConfigError, match=r"run\.out_dir: the run directory would be /.*(system folder|root folder)"):
        load_config(params, {f"run.{k}": v for k, v in where["run"].items()})


def test_figures_in_the_root_folder_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"plot\.figures_dir: .*root folder"):
        load_config(write_params(tmp_path), {"plot.figures_dir": "/"})
