"""What every evaluation file of an SAE shares: the key that says when it is out of date, reading a
kept one back, and the identity fields SAEBench's output schemas require.

The core eval (`eval/<sae>.json`), sparse probing (`eval/sparse_probing/<sae>.json`) and unlearning
(`eval/unlearning/<sae>.json`) each record the key they were made with; a file whose key still matches
is kept instead of recomputed.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

from tsae_core.config import ExperimentConfig
from tsae_core.io import code_hash, read_json
from tsae_core.sae import recorded_weights_sha256


def eval_key(cfg: ExperimentConfig, name: str, run_dir: Path, sections: tuple[str, ...], **extra: Any) -> str | None:
    """What an SAE's evaluation depends on: its weights, its variant, the named config sections, tsae's
    code (figures aside) and any `extra` values; None while the SAE has no recorded weights."""
    weights = recorded_weights_sha256(Path(run_dir) / "saes" / name)
    if weights is None:
        return None
    inst = cfg.instance(name)
    blob = json.dumps({"weights": weights, "instance": name, "variant": cfg.to_dict()["variants"][inst.variant],
                       "settings": cfg.hash(*sections), "code": code_hash(without=("plots",)), **extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def kept_evaluation(path: Path, key: str | None) -> dict[str, Any] | None:
    """The evaluation at `path` if it was made with `key`, else None (missing, unreadable, stale)."""
    if key is None or not Path(path).is_file():
        return None
    try:
        result = read_json(path)
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("eval_key") == key else None


def saebench_identity(sae: Any, name: str, run_name: str) -> dict[str, Any]:
    """The keys SAEBench's output schemas require of every eval file, filled honestly: no SAEBench
    commit or SAELens version ran this evaluation (null / "none"), the SAE is `<run>/<name>`, and
    `sae_cfg_dict` is the SAELens config its export writes (None for a variant SAELens cannot express;
    tsae's own config is `sae_cfg`)."""
    from tsae_core.interop import NotRepresentable, saelens_cfg

    try:
        cfg_dict = saelens_cfg(sae, name)
    except NotRepresentable:
        cfg_dict = None
    return {"eval_id": str(uuid.uuid4()), "datetime_epoch_millis": int(time.time() * 1000),
            "sae_bench_commit_hash": "none (evaluated by tsae)", "sae_lens_id": name, "sae_lens_release_id": f"tsae/{run_name}",
            "sae_lens_version": None, "sae_cfg_dict": cfg_dict}
