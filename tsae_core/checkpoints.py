"""Where a training run keeps its state: checkpoints, curves and the record of a failed training.

A checkpoint holds tensors and plain containers only and is loaded with `weights_only=True`, so a
crafted file in a run directory cannot run code. The two newest are kept: an unreadable newest one
(truncated by a full disk or a kill mid-copy) is removed and the older one used instead.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tsae_core.io import read_json, torch_save, write_json, write_text
from tsae_core.sae import SAEFileError, verify_sae_files

FAILED = "failed.json"
"""Written instead of the SAE files when training ends in a collapsed SAE (see `record_failure`)."""
_STEP_RE = re.compile(r"^step_(\d{8})\.pt$")


@dataclass
class TrainPaths:
    sae_dir: Path
    curves: Path

    @property
    def checkpoints(self) -> Path:
        return self.sae_dir / "checkpoints"

    @property
    def failure(self) -> Path:
        return self.sae_dir / FAILED

    @classmethod
    def of(cls, run_dir: Path, name: str) -> TrainPaths:
        return cls(run_dir / "saes" / name, run_dir / "train" / f"{name}.jsonl")


def checkpoint_files(paths: TrainPaths) -> list[Path]:
    """Checkpoint files, oldest first (names carry the zero-padded step)."""
    if not paths.checkpoints.is_dir():
        return []
    return sorted(p for p in paths.checkpoints.iterdir() if _STEP_RE.match(p.name))


def latest_checkpoint(paths: TrainPaths) -> Path | None:
    found = checkpoint_files(paths)
    return found[-1] if found else None


def checkpoint_step(path: Path) -> int:
    return int(_STEP_RE.match(path.name).group(1))


def load_checkpoint(paths: TrainPaths, device: torch.device) -> dict[str, Any] | None:
    """The newest readable checkpoint; an unreadable one is reported (on stderr, which `tsae run` shows on
    the terminal, not only in the executed notebook), removed, and the older one tried."""
    for ckpt in reversed(checkpoint_files(paths)):
        try:
            state = torch.load(ckpt, map_location=device, weights_only=True)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("not a training checkpoint")
            return state
        except Exception as e:  # noqa: BLE001 - any unreadable file is handled the same way
            print(f"[tsae] checkpoint {ckpt} is unreadable ({type(e).__name__}: {str(e)[:120]}); "
                  f"removing it and trying the previous one", file=sys.stderr, flush=True)  # stderr: on the terminal
            ckpt.unlink(missing_ok=True)
    return None


def save_checkpoint(paths: TrainPaths, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `step_<step>.pt` atomically and keep only the `keep` newest."""
    path = paths.checkpoints / f"step_{step:08d}.pt"
    torch_save(path, {"step": step, **state})
    for old in checkpoint_files(paths)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def truncate_curves(curves: Path, last_step: int) -> None:
    """Keep the curve records up to the checkpoint we resume from (atomically); unreadable lines
    (a kill mid-append) are dropped."""
    if not curves.is_file():
        return
    kept = []
    for line in curves.read_text(errors="replace").splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_text(curves, "".join(ln + "\n" for ln in kept))


def record_failure(paths: TrainPaths, train_hash: str, reason: str, training: dict[str, Any]) -> None:
    """Record that training this SAE failed (and why) in place of its files, so the run goes on with
    the other SAEs and the failure is reported instead of an SAE that silently does nothing."""
    for name in ("sae.safetensors", "cfg.json"):
        (paths.sae_dir / name).unlink(missing_ok=True)
    write_json(paths.failure, {"train_hash": train_hash, "reason": reason, "training": training})


def recorded_failure(paths: TrainPaths, train_hash: str) -> str | None:
    """The reason recorded by `record_failure` for this training hash, or None."""
    try:
        record = read_json(paths.failure)
        return record["reason"] if record.get("train_hash") == train_hash else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def trained_state(paths: TrainPaths, train_hash: str) -> tuple[str, str]:
    """("trained", ""), ("failed", reason) for a recorded failed training of this hash, or
    ("missing", why) when the SAE must be (re)trained: absent, trained for other parameters, or
    files that fail their checksum."""
    reason = recorded_failure(paths, train_hash)
    if reason is not None:
        return "failed", reason
    if not paths.sae_dir.joinpath("cfg.json").is_file():
        return "missing", f"{paths.sae_dir} is not trained"
    try:
        cfg = verify_sae_files(paths.sae_dir)
    except SAEFileError as e:
        return "missing", str(e).split("; ")[0]
    if cfg.get("train_hash") != train_hash:
        return "missing", f"{paths.sae_dir} was trained with other parameters"
    return "trained", ""
