"""`tsae report RUN [RUN ...] [--out DIR]`: a results report per run, generated from the run's JSON alone.

Each report (`DIR/<run>.md`, figures in `DIR/<run>/`) opens with the answer in plain words, then the
setup, the health of every SAE, the summary per variant, the verdict of each variant against its
baseline, the temporal statistics beside their controls, the training curves and, where the run has
them, the mechanism tests. See docs/reports.md. Modules, one concept each:

- `loading`: a run's JSON files (`RunResults`);
- `roles`: baselines, priors, controls and sweep points;
- `text`: how numbers and tables print;
- `answer`: the generated answer (a lead, one item per prior or control);
- `run_setup`, `health`, `summary`, `verdicts`, `temporal`, `curves`, `mechanisms`: one section each;
- `figures`: the figures; `document`: the assembled report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tsae_core.report.document import build_report, write_report
from tsae_core.report.loading import RunResults, load_run

DEFAULT_OUT = "docs/results"

__all__ = ["DEFAULT_OUT", "RunResults", "build_report", "load_run", "report_command", "write_report"]


def report_command(runs: list[str], out: str | Path = DEFAULT_OUT) -> int:
    """Write the report of each run (a run directory, or a name under runs/); 1 when a run is missing."""
    from tsae_core.params_file import resolve_path

    out_dir = resolve_path(out)
    status = 0
    for run in runs:
        try:
            path = write_report(run, out_dir)
        except FileNotFoundError as e:
            print(f"tsae report: {e}", file=sys.stderr)
            status = 1
            continue
        print(f"[tsae] report: {path}")
    return status
