"""SAELens 6.x folders opened as tsae SAEs: the import half of the SAELens interop (the conventions and
the refusals are described in `tsae_core.interop`'s docstring; the checks both halves share are in
`tsae_core.saelens_check`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors.torch import load_file

from tsae_core.io import read_json
from tsae_core.sae import SAE, SAE_WEIGHTS, SAEConfig, SAEFileError
from tsae_core.saelens_check import SAELENS_CFG, SAELENS_TO_ACTIVATION, SAELENS_WEIGHTS, NotRepresentable, saelens_problems


def is_saelens_folder(directory: str | Path) -> bool:
    """A SAELens folder: `sae_weights.safetensors` and `cfg.json`, and no tsae weights file."""
    d = Path(directory)
    return (d / SAELENS_WEIGHTS).is_file() and (d / SAELENS_CFG).is_file() and not (d / SAE_WEIGHTS).is_file()


def _major_version(version: Any) -> int | None:
    try:
        return int(str(version).strip().lstrip("v").split(".")[0])
    except ValueError:
        return None


def _refuse(directory: Path, why: str) -> NotRepresentable:
    return NotRepresentable(f"cannot open the SAELens SAE in {directory} as a tsae SAE: {why}")


def load_saelens_sae(directory: str | Path) -> SAE:
    """The tsae SAE equivalent to the SAELens 6.x folder `directory` (CPU, float32, train mode).

    SAELens folders carry no checksum, so their bytes are not checked: only the config's values and
    the tensors' names and shapes. `NotRepresentable` names what tsae cannot express."""
    directory = Path(directory)
    raw = _read_saelens_cfg(directory)
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    version = meta.get("sae_lens_version") or raw.get("sae_lens_version")
    architecture, d_in, d_sae = _check_saelens_cfg(directory, raw, version)
    tensors = _read_saelens_tensors(directory, raw, architecture, d_in, d_sae)
    k = int(raw["k"]) if architecture == "topk" else None
    w = _fold_saelens_conventions(raw, architecture, tensors)

    activation = SAELENS_TO_ACTIVATION[architecture]
    source = {
        "kind": "saelens",
        "model": meta.get("model_name"),
        "hook_name": meta.get("hook_name"),
        "context_size": meta.get("context_size"),
        "prepend_bos": meta.get("prepend_bos"),
        "dataset": meta.get("dataset_path"),
        "saelens": {key: raw.get(key) for key in ("architecture", "dtype", "apply_b_dec_to_input", "normalize_activations",
                                                  "reshape_activations", "rescale_acts_by_decoder_norm")}
        | {"sae_lens_version": version},
    }
    if isinstance(meta.get("tsae"), dict):
        source["tsae"] = meta["tsae"]  # a folder tsae exported: its original record
    cfg = SAEConfig(architecture="standard", activation=activation, d_in=d_in, d_sae=d_sae, k=k,
                    activation_scaling_factor=1.0, unit_norm_decoder=activation != "relu", source=source)
    sae = SAE(cfg)  # SAELens architectures are all the token-wise SAE
    try:
        sae.load_weight_tensors({n: t.to(torch.float32) for n, t in w.items()})
    except ValueError as e:
        raise SAEFileError(f"cannot load the SAELens weights in {directory} ({e})") from None
    return sae


def _read_saelens_cfg(directory: Path) -> dict[str, Any]:
    """The folder's `cfg.json` as a dict; a missing, malformed or tsae config is an `SAEFileError`."""
    try:
        raw = read_json(directory / SAELENS_CFG)
    except (OSError, ValueError) as e:
        raise SAEFileError(f"unreadable SAELens config {directory / SAELENS_CFG} ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise SAEFileError(f"unreadable SAELens config {directory / SAELENS_CFG} (expected a JSON object)")
    if "weights_sha256" in raw or "activation" in raw:
        raise SAEFileError(f"{directory / SAELENS_CFG} is a tsae config, but the weights are named {SAELENS_WEIGHTS}; "
                           f"name them {SAE_WEIGHTS} (or export the SAE with `tsae export ... --format saelens`)")
    return raw


def _check_saelens_cfg(directory: Path, raw: dict[str, Any], version: Any) -> tuple[str, int, int]:
    """The config's architecture, d_in and d_sae, after refusing versions and settings tsae cannot represent."""
    major = _major_version(version) if version else None
    if major is None or major < 6:
        raise _refuse(directory, f"its cfg.json is from SAELens {version or 'before 6.0 (no version recorded)'}, "
                                 "and only the 6.x format is read; load it with SAELens 6 (`SAE.load_from_disk`) "
                                 "and write it again with `save_model`")
    architecture = raw.get("architecture", "standard")
    if architecture not in SAELENS_TO_ACTIVATION:
        raise _refuse(directory, f"architecture {architecture!r} has no tsae counterpart (tsae reads "
                                 f"{', '.join(SAELENS_TO_ACTIVATION)})")
    norm = raw.get("normalize_activations", "none")
    if norm != "none":
        why = ("its activation scaling factor is not in the folder; fold it with "
               "`sae.fold_activation_norm_scaling_factor(s)` in SAELens and save again"
               if norm == "expected_average_only_in" else "it normalises each input at run time, which a tsae SAE does not")
        raise _refuse(directory, f"normalize_activations is {norm!r}: {why}")
    sizes = {}
    for key in ("d_in", "d_sae"):
        value = raw.get(key)
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole or value < 1:
            raise SAEFileError(f"SAELens config {directory / SAELENS_CFG}: {key} must be a positive integer, "
                               f"not {value!r}")
        sizes[key] = int(value)
    d_in, d_sae = sizes["d_in"], sizes["d_sae"]
    return architecture, d_in, d_sae


def _read_saelens_tensors(directory: Path, raw: dict[str, Any], architecture: str, d_in: int, d_sae: int) -> dict[str, torch.Tensor]:
    """The folder's weight tensors (less a unit `scaling_factor`), checked for names, shapes and values."""
    try:
        tensors = load_file(str(directory / SAELENS_WEIGHTS))
    except (OSError, safetensors.SafetensorError) as e:
        raise SAEFileError(f"unreadable SAELens weights {directory / SAELENS_WEIGHTS} ({type(e).__name__}: {e})") from None
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and not torch.allclose(scaling.float(), torch.ones_like(scaling.float())):
        raise _refuse(directory, "it has a finetuning scaling factor other than 1")
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if architecture == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if set(tensors) != set(shapes):
        raise _refuse(directory, f"architecture {architecture!r} needs the tensors {sorted(shapes)}, the file has {sorted(tensors)}")
    wrong = {n: tuple(t.shape) for n, t in tensors.items() if tuple(t.shape) != shapes[n]}
    if wrong:
        raise SAEFileError(f"SAELens weights {directory / SAELENS_WEIGHTS} have shapes {wrong}, expected "
                           f"{ {n: shapes[n] for n in wrong} } for d_in {d_in}, d_sae {d_sae}")
    if problems := saelens_problems(raw, tensors):
        raise _refuse(directory, "; ".join(f"{directory / file}: {why}" for file, why in problems))
    return tensors


def _fold_saelens_conventions(raw: dict[str, Any], architecture: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights in float64 with SAELens's decoder-norm rescaling and unshifted input folded in, as tsae computes."""
    w = {n: t.to(torch.float64) for n, t in tensors.items()}
    if architecture == "topk" and raw.get("rescale_acts_by_decoder_norm", False):
        # SAELens picks the top k of pre * ||W_dec_i|| and decodes f / ||W_dec_i||: the same as unit rows
        norms = w["W_dec"].norm(dim=-1)
        w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"] * norms, w["b_enc"] * norms, w["W_dec"] / norms[:, None]
    if not raw.get("apply_b_dec_to_input", True):
        # SAELens: pre = x W_enc + b_enc;  tsae: (x - b_dec) W_enc + b_enc'  with  b_enc' = b_enc + b_dec W_enc
        w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
    return w
