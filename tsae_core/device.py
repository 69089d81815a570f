"""Which device a run trains and evaluates on (`run.device`), and the matmul precision used there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"run.device is {name!r} but no CUDA device is available; use run.device=cpu or auto")
    return torch.device(name)


@contextlib.contextmanager
def tf32_matmuls(device: torch.device) -> Iterator[None]:
    """On a GPU, TF32 for the float32 matmuls that bf16 autocast leaves in float32; restored after."""
    if device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
