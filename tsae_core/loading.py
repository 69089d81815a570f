"""Opening a trained SAE from its folder, whichever variant it is: a tsae folder (`cfg.json` +
`sae.safetensors`, checked against its checksum) or a SAELens 6.x folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import safetensors
import torch
from safetensors.torch import load_file

from tsae_core.sae import SAE, SAE_WEIGHTS, SAEConfig, damaged_sae, verify_sae_files
from tsae_core.saelens_import import is_saelens_folder, load_saelens_sae
from tsae_core.typed import ConfigError
from tsae_core.variants.registry import build_sae


def load_sae(directory: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Load any variant from `saes/<variant>/`, in eval mode, ready for inference.

    The weights are checked against the checksum in cfg.json first: flipped or truncated bytes are
    an `SAEFileError` naming the file and the fix, never silently different numbers.

    A SAELens 6.x folder (`sae_weights.safetensors` + its `cfg.json`) opens too, as the equivalent
    tsae SAE (`tsae_core.saelens_import`). SAELens records no checksum of its weights, so
    those bytes are not checked."""
    directory = Path(directory)
    if is_saelens_folder(directory):
        return load_saelens_sae(directory).to(device).eval()
    raw = verify_sae_files(directory)
    names = {f.name for f in dataclasses.fields(SAEConfig)}
    try:
        cfg = SAEConfig(**{k: v for k, v in raw.items() if k in names})
        sae = build_sae(cfg)
        sae.load_weight_tensors(load_file(str(directory / SAE_WEIGHTS)))
    except (TypeError, ValueError, KeyError, ConfigError, safetensors.SafetensorError) as e:
        raise damaged_sae(directory, f"cannot load the SAE in {directory} ({type(e).__name__}: {e})") from None
    return sae.to(device).eval()
