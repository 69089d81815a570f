"""The known features behind a synthetic source, saved beside the activations they generated."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from tsae_core.io import save_tensors

_FORMAT = "tsae.ground_truth.v1"


@dataclass
class GroundTruth:
    """The true features of a synthetic source.

    directions_GD       unit-norm feature directions
    kinds               'fast' | 'slow' | 'positional' per feature
    rates_G             theoretical stationary firing probability per token
    mean_run_G          expected length of a firing run (1/(1-p) fast, L_g slow, windowed positional)
    parent_G            index of the slow parent of a hierarchical fast feature, -1 where none
    position_start_G    first position of a positional feature's window, -1 for other kinds
    """

    directions_GD: torch.Tensor
    kinds: list[str]
    rates_G: torch.Tensor
    mean_run_G: torch.Tensor
    parent_G: torch.Tensor | None = None
    position_start_G: torch.Tensor | None = None

    def __post_init__(self) -> None:
        none_G = torch.full((self.directions_GD.shape[0],), -1, dtype=torch.int64)
        self.parent_G = none_G.clone() if self.parent_G is None else self.parent_G
        self.position_start_G = none_G.clone() if self.position_start_G is None else self.position_start_G

    @property
    def n_features(self) -> int:
        return self.directions_GD.shape[0]

    @property
    def true_l0(self) -> float:
        """Expected number of active features per token, sum_g r_g."""
        return float(self.rates_G.sum())

    def kind_mask(self, kind: str) -> torch.Tensor:
        """Boolean (G,) mask of the features of one kind."""
        return torch.tensor([k == kind for k in self.kinds], dtype=torch.bool)

    def save(self, path: str | Path) -> None:
        tensors = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "kinds"}
        # safetensors metadata holds strings only, hence the JSON-encoded list
        save_tensors(path, tensors, metadata={"format": _FORMAT, "kinds": json.dumps(self.kinds)})

    @classmethod
    def load(cls, path: str | Path) -> GroundTruth:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a tsae ground-truth file (format {meta.get('format')!r})")
        return cls(kinds=json.loads(meta["kinds"]), **tensors)
