"""SAEBench's own JSON schemas of its eval outputs, read from the installed `sae-bench` package
(installed without its dependencies: only these files are used, none of its code runs)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

SCHEMAS = {"core": "core/eval_output_schema_core.json",
           "sparse_probing": "sparse_probing/eval_output_schema_sparse_probing.json",
           "unlearning": "unlearning/eval_output_schema_unlearning.json",
           "autointerp": "autointerp/eval_output_schema_autointerp.json"}


def saebench_schema(eval_type: str) -> dict[str, Any]:
    """The schema of one SAEBench eval type; skips the test when `sae-bench` is not installed."""
    spec = importlib.util.find_spec("sae_bench")  # finds the package without importing it (its imports need torch extras)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sae-bench is not installed (`make setup` installs it, without dependencies, for its schemas)")
    path = Path(next(iter(spec.submodule_search_locations))) / "evals" / SCHEMAS[eval_type]
    return json.loads(path.read_text())


def schema_errors(result: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every way `result` (as written to disk: a JSON round trip) breaks `schema`, as 'path: message'."""
    import jsonschema

    data = json.loads(json.dumps(result))
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in validator.iter_errors(data)]
