"""SAELens interoperability: tsae SAEs written as SAELens 6.x folders, SAELens folders opened as tsae SAEs.

A SAELens 6.x folder is `cfg.json` + `sae_weights.safetensors`, read by `sae_lens.SAE.load_from_disk`.

**Export** (`tsae export RUN_OR_SAE_DIR --format saelens OUT`, `export_saelens`). tsae's weights
act on normalised activations x_n = s x (s = `cfg.activation_scaling_factor`); SAELens's act on raw
activations. s is folded into the weights, as SAELens's own `fold_activation_norm_scaling_factor`
does:

    W_enc' = s W_enc     b_enc' = b_enc     W_dec' = W_dec / s     b_dec' = b_dec / s

so that (x - b_dec') W_enc' + b_enc' = (s x - b_dec) W_enc + b_enc (the same pre-activations, so
thresholds and the TopK choice are unchanged) and f W_dec' + b_dec' = (f W_dec + b_dec) / s (tsae's
raw-unit reconstruction). The fold is computed in float64 and rounded once to the weights' dtype.

    tsae activation          SAELens architecture
    relu                     standard
    topk (k)                 topk (k, rescale_acts_by_decoder_norm false)
    batchtopk                jumprelu, every latent's threshold = the single inference threshold
    jumprelu                 jumprelu (per-latent thresholds)

JumpReLU in SAELens is relu(pre) 1[pre > theta], in tsae pre 1[pre > theta]: equal where no threshold
is negative, which export checks with the same rules as import (`tsae_core.saelens_check`). Only SAEs whose inference is the token-wise SAE's can be written: an
architecture whose class declares `token_wise = False` (an encoder that reads other tokens, a
different forward pass) is refused, naming why (`saelens_refusal`, from its `reads_other_tokens`). Variants that only add training losses (consistency, contrastive, matryoshka,
orthogonal) are plain SAEs at inference and are written as such; their training-only tensors (the
orthogonal variant's groups) are left out. Each folder is written whole into a temporary directory
beside the target, then renamed onto it.

**Import** (`tsae_core.saelens_import.load_saelens_sae`, reached through `tsae_core.loading.load_sae`). SAELens `standard`,
`topk` and `jumprelu` become tsae `relu`, `topk` and `jumprelu` SAEs with scaling factor 1.0.
`apply_b_dec_to_input: false` is folded into b_enc (b_enc += b_dec W_enc) and TopK's
`rescale_acts_by_decoder_norm: true` into the weights (SAELens's `fold_W_dec_norm`); the weights
become float32 whatever their stored dtype. `reshape_activations: hook_z` is kept as a note in the
source: the tsae SAE reads the flattened (n_heads * d_head) vectors. Other architectures, activation
normalisations applied at run time or not folded, and configs older than SAELens 6 are refused with
the reason; so are non-finite weights, a TopK `k` outside 1..d_sae and negative JumpReLU thresholds,
naming the file and the key or tensor (`tsae_core.saelens_check`).
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tsae_core.io import TEMP_PREFIX, TEMP_SUFFIX, save_tensors, write_json
from tsae_core.loading import load_sae
from tsae_core.sae import SAE, SAE_CFG, SAE_WEIGHTS, SAEConfig, SAEFileError, read_sae_cfg
from tsae_core.saelens_check import (  # noqa: F401 (the import side's names, importable from here)
    ACTIVATION_TO_SAELENS,
    SAELENS_CFG,
    SAELENS_TO_ACTIVATION,
    SAELENS_WEIGHTS,
    NotRepresentable,
    saelens_problems,
)
from tsae_core.saelens_import import is_saelens_folder, load_saelens_sae  # noqa: F401 (the import side)
from tsae_core.variants.registry import variant_class
from tsae_core.version import __version__

SAELENS_FORMAT_VERSION = "6.54.12"
"""The SAELens release whose `load_from_disk` the exported folders are written for (and tested against)."""

_LANGUAGE_MODEL_KINDS = ("tinylm", "hf", "gguf")
_UMASK = os.umask(0)
os.umask(_UMASK)


# -- which SAEs SAELens can represent -----------------------------------------------------------
def saelens_refusal(architecture: str) -> str | None:
    """None when `architecture`'s inference is the token-wise SAE's, else why SAELens cannot represent it."""
    cls = variant_class(architecture)
    if cls.token_wise:
        return None
    return (f"architecture {architecture!r}: {cls.reads_other_tokens or 'its inference is not token-wise'}, while a "
            f"SAELens SAE encodes each token on its own with one linear encoder and decoder")


def saelens_architecture(sae: SAE) -> str:
    """The SAELens architecture `sae` is written as; `NotRepresentable` if there is none."""
    why = saelens_refusal(sae.cfg.architecture)
    if why is not None:
        raise NotRepresentable(why)
    if sae.cfg.activation not in ACTIVATION_TO_SAELENS:
        raise NotRepresentable(f"activation {sae.cfg.activation!r} has no SAELens counterpart")
    return ACTIVATION_TO_SAELENS[sae.cfg.activation]


# -- export ---------------------------------------------------------------------------------------
@torch.no_grad()
def saelens_tensors(sae: SAE) -> dict[str, torch.Tensor]:
    """The SAELens weights of `sae`, its scaling factor folded in (see the module docstring)."""
    architecture = saelens_architecture(sae)
    s = float(sae.cfg.activation_scaling_factor)
    if not (math.isfinite(s) and s > 0):
        raise NotRepresentable(f"activation scaling factor {s} cannot be folded into the weights (it must be finite and > 0)")
    dtype = sae.W_enc.dtype

    def f64(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float64)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).contiguous()

    tensors = {"W_enc": cast(f64(sae.W_enc) * s), "b_enc": cast(f64(sae.b_enc)), "W_dec": cast(f64(sae.W_dec) / s),
               "b_dec": cast(f64(sae.b_dec) / s)}
    if architecture == "jumprelu":
        tensors["threshold"] = sae.activation.export_tensors()["threshold"].detach().to("cpu", dtype).contiguous()
    return tensors


def saelens_metadata(cfg: SAEConfig, name: str | None = None, weights_sha256: str | None = None) -> dict[str, Any]:
    """SAELens `metadata`: what the activations were taken from, and tsae's own record under `tsae`."""
    source = cfg.source or {}
    meta: dict[str, Any] = {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None}
    language_model = source.get("kind") in _LANGUAGE_MODEL_KINDS
    if source.get("model") is not None:
        meta["model_name"] = source["model"]
    if source.get("kind") == "hf":
        meta["model_class_name"] = "HookedTransformer"
    if source.get("hook_name") is not None:
        meta["hook_name"] = source["hook_name"]
        meta["hook_head_index"] = None
    if source.get("context_size") is not None:
        meta["context_size"] = int(source["context_size"])
    # every context of a language-model source starts with BOS, and documents are separated by it;
    # special tokens (BOS, EOS, padding) never count in training or evaluation
    meta["prepend_bos"] = bool(language_model)
    if language_model:
        meta["exclude_special_tokens"] = True
        meta["model_from_pretrained_kwargs"] = {}  # activations of the unprocessed model (`from_pretrained_no_processing`)
    if source.get("dataset"):
        meta["dataset_path"] = source["dataset"]
    meta["tsae"] = {
        "version": __version__,
        "name": name,
        "architecture": cfg.architecture,
        "activation": cfg.activation,
        "k": cfg.k,
        "options": cfg.options,
        "activation_scaling_factor": cfg.activation_scaling_factor,
        "activation_scaling_factor_folded": True,
        "weights_sha256": weights_sha256,
        "source": source,
    }
    return meta


def saelens_cfg(sae: SAE, name: str | None = None, weights_sha256: str | None = None) -> dict[str, Any]:
    """The SAELens 6.x `cfg.json` of `sae` (keys in the order SAELens writes them)."""
    architecture = saelens_architecture(sae)
    dtype = str(sae.W_enc.dtype).removeprefix("torch.")
    cfg: dict[str, Any] = {
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # the scaling factor is folded into the weights
        "reshape_activations": "none",
        "metadata": saelens_metadata(sae.cfg, name, weights_sha256),
    }
    if architecture == "topk":  # a k out of range is refused by `saelens_problems`
        cfg.update(k=sae.cfg.k, rescale_acts_by_decoder_norm=False)
    cfg["architecture"] = architecture
    return cfg


@dataclass
class ExportResult:
    exported: list[tuple[str, Path]] = field(default_factory=list)
    """(name, folder written)."""
    refused: list[tuple[str, str]] = field(default_factory=list)
    """(name, why it was not written)."""


def _saes_of(source: Path) -> tuple[list[tuple[str, Path]], bool]:
    """([(name, directory)], is_run): the SAE folder itself, or every SAE folder of a run directory."""
    if (source / SAE_CFG).is_file() or (source / SAE_WEIGHTS).is_file():
        return [(source.name, source)], False
    saes = source / "saes"
    if saes.is_dir():
        return [(d.name, d) for d in sorted(saes.iterdir()) if d.is_dir()], True
    raise FileNotFoundError(f"{source} is neither an SAE folder (cfg.json + {SAE_WEIGHTS}) nor a run directory (with saes/)")


def _refusal_before_loading(directory: Path) -> str | None:
    """Why the SAE in `directory` cannot be exported, from its files and cfg.json alone (None: try)."""
    from tsae_core.checkpoints import FAILED

    if (directory / FAILED).is_file():
        return f"its training failed ({FAILED})"
    if is_saelens_folder(directory):
        return "it is a SAELens folder already"
    if not (directory / SAE_CFG).is_file():
        return "it has no cfg.json (not trained yet)"
    raw = read_sae_cfg(directory)
    try:
        return saelens_refusal(str(raw.get("architecture", "standard")))
    except ValueError as e:
        return str(e)


def export_saelens(source: str | Path, out: str | Path, force: bool = False) -> ExportResult:
    """Write the SAE folder `source` to the SAELens folder `out`, or every SAE of the run directory
    `source` to `out/<name>/`; SAEs SAELens cannot represent are refused (listed in the result).

    An existing target is an error before anything is written, unless `force` (then it is replaced)."""
    source, out = Path(source), Path(out)
    saes, is_run = _saes_of(source)
    result = ExportResult()
    todo: list[tuple[str, Path, Path]] = []
    for name, directory in saes:
        try:
            why = _refusal_before_loading(directory)
        except SAEFileError as e:  # an unreadable cfg.json: this SAE only
            why = str(e)
        if why is not None:
            result.refused.append((name, why))
        else:
            todo.append((name, directory, out / name if is_run else out))
    for (name, _, target), (_, directory) in itertools.product(todo, saes):  # no target may be or hold any source
        if clash := _clash(directory, target):
            raise NotRepresentable(f"not exporting {name}: {clash}; give OUT a folder outside {directory}")
    existing = [str(target) for _, _, target in todo if target.exists() or target.is_symlink()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                              f"remove {'it' if len(existing) == 1 else 'them'} or pass --force to replace")
    for name, directory, target in todo:
        try:
            sae = load_sae(directory)
            tensors = saelens_tensors(sae)
            cfg = saelens_cfg(sae, name, read_sae_cfg(directory).get("weights_sha256"))
        except (SAEFileError, NotRepresentable) as e:
            result.refused.append((name, str(e)))
            continue
        if problems := saelens_problems(cfg, tensors, exporting=True):  # the same rules as an import of the folder
            result.refused.append((name, "; ".join(f"its SAELens {file} would be refused: {why}" for file, why in problems)))
            continue
        write_saelens_folder(target, cfg, tensors, replace=force)
        result.exported.append((name, target))
    return result


def _clash(source: Path, target: Path) -> str | None:
    """Why writing `target` would damage the SAE folder `source` it is exported from (None: it would not).
    Replacing a folder removes it first, so the target must not be the source nor hold it."""
    s, t = source.resolve(), target.resolve()
    if t == s:
        return f"the destination {target} is the SAE folder itself (--force would delete the trained SAE)"
    if t in s.parents:
        return f"the destination {target} holds the SAE folder {source} (--force would delete it)"
    if s in t.parents:
        return f"the destination {target} is inside the SAE folder {source}"
    return None


def write_saelens_folder(target: Path, cfg: dict[str, Any], tensors: dict[str, torch.Tensor], replace: bool = False) -> None:
    """Write `cfg.json` and the weights into a temporary directory beside `target`, then rename it
    onto `target`: the folder appears whole or not at all. `replace`: an existing folder is replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent))
    old: Path | None = None
    try:
        save_tensors(tmp / SAELENS_WEIGHTS, tensors)
        write_json(tmp / SAELENS_CFG, cfg)
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 directories; give the usual mode
        if target.exists() or target.is_symlink():
            if not replace:
                raise FileExistsError(f"{target} already exists")
            if not target.is_dir() or target.is_symlink():
                raise FileExistsError(f"{target} exists and is not a directory; not replacing it")
            old = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{target.name}.old.", suffix=TEMP_SUFFIX, dir=target.parent))
            os.replace(target, old / target.name)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / target.name).exists() and not target.exists():
            os.replace(old / target.name, target)  # put the previous folder back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def export_command(source: str, out: str, fmt: str, force: bool = False) -> int:
    """`tsae export`: 0 when every SAE was written, 1 when one was refused or nothing could be written."""
    if fmt != "saelens":
        print(f"tsae export: unknown format {fmt!r}; known: saelens", file=sys.stderr)
        return 1
    try:
        result = export_saelens(source, out, force=force)
    except (OSError, SAEFileError, NotRepresentable) as e:  # not an SAE or run folder, a target in the way or the source
        print(f"tsae export: {e}", file=sys.stderr)
        return 1
    for name, target in result.exported:
        print(f"[tsae] exported {name} -> {target}")
    if result.refused:
        exported = ", ".join(name for name, _ in result.exported) or "none"
        lines = "\n".join(f"  {name}: {why}" for name, why in result.refused)
        print(f"tsae export: not exported to SAELens:\n{lines}\nexported: {exported}", file=sys.stderr)
        return 1
    return 0
