"""Shared fixtures (a tiny harvested run directory built once per test process), and how `make test`
spreads the suite over its worker processes (pytest-xdist, `-n 2 --dist loadfile`): one torch thread
each, so that two workers on two cores do not slow each other down, and the costliest files first."""

from __future__ import annotations

import os
import signal

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one of several workers: the cores are shared out, one each
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch starts here, and for the processes tests start
    import torch

    torch.set_num_threads(1)

from tsae_core.config import load_config  # noqa: E402


def ci_config(out_dir, **overrides):
    """The tiny CI experiment, writing under `out_dir`."""
    return load_config("params/ci.yaml", {"run.out_dir": str(out_dir), **overrides})


@pytest.fixture(scope="session")
def harvested(tmp_path_factory):
    """(config, store) of the CI experiment with its activations harvested once."""
    from tsae_core.harvest import harvest
    from tsae_core.store import ActivationStore

    cfg = ci_config(tmp_path_factory.mktemp("runs"))
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    return cfg, ActivationStore.open(cfg.run_dir / "activations")


def sigint_at_default() -> None:
    """`preexec_fn` of a child that a test sends Ctrl-C: SIGINT at its default, as in a terminal's
    foreground job. A suite started in the background of a non-interactive shell (`make test &` in a
    script) ignores SIGINT; its children inherit that, Python keeps ignoring it, and the Ctrl-C is lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _minutes(item: pytest.Item) -> float:
    """The cost a test file declares with `pytest.mark.slow(minutes=...)` (0 when it declares none)."""
    return max((float(m.kwargs.get("minutes", 0)) for m in item.iter_markers("slow")), default=0.0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The costliest files first (stable otherwise): each worker takes a whole file at a time, so the
    files that take most of the suite's time start at once on different workers instead of last."""
    items.sort(key=lambda item: -_minutes(item))
