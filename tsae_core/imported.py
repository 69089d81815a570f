"""SAEs brought in rather than trained: a variant with `load_from` is an existing SAE folder.

A researcher's own SAE (a SAELens 6 folder, `cfg.json` + `sae_weights.safetensors`, e.g. one they
trained on GPT-2 or Gemma; or another run's tsae SAE) joins a run as a variant, is copied into
`runs/<run>/saes/<name>/` as a tsae SAE with its checksum, and from there is evaluated, clustered and
plotted exactly like the trained ones. It has no training curve; `cfg.json` records where it came
from (`training.imported_from`, the source's weight checksum) and zero training steps.

It must read the run's activations: the same width, and the same hook where its folder names one;
its weights must be finite, and a SAELens folder must pass `tsae_core.saelens_check` (the rules
export applies). A source folder that is damaged is not this run's to repair: the message says how
to restore it (or, if it is another run's SAE, that run's command that retrains it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsae_core.checkpoints import TrainPaths
from tsae_core.config import ConfigError, ExperimentConfig, resolve_path
from tsae_core.interop import SAELENS_WEIGHTS, NotRepresentable, is_saelens_folder
from tsae_core.io import sha256_file
from tsae_core.loading import load_sae
from tsae_core.repair import invocation, repair_command, run_dir_of_sae
from tsae_core.sae import SAE, SAE_WEIGHTS, SAEFileError, save_sae, verify_sae_files
from tsae_core.saelens_check import nonfinite_problems


class ImportRefused(ConfigError):
    """The SAE named by `load_from` cannot stand for a variant of this run; the message says why."""


def source_folder(cfg: ExperimentConfig, name: str) -> Path:
    """The folder `variants.<variant>.load_from` names, resolved like every params path."""
    v = cfg.variants[cfg.instance(name).variant]
    folder = resolve_path(v.load_from)
    if not folder.is_dir():
        raise ImportRefused(f"variants.{cfg.instance(name).variant}.load_from: {folder} is not a folder; give a SAELens "
                            "folder (cfg.json + sae_weights.safetensors) or a tsae SAE folder (runs/<run>/saes/<name>)")
    return folder


def source_digest(folder: Path) -> str:
    """sha256 of the source's weights file: a changed SAE at the same path is imported again."""
    weights = folder / (SAELENS_WEIGHTS if is_saelens_folder(folder) else SAE_WEIGHTS)
    if not weights.is_file():
        raise ImportRefused(f"{folder} holds neither {SAELENS_WEIGHTS} (SAELens) nor {SAE_WEIGHTS} (tsae); "
                            "point load_from at the folder that holds the SAE's weights and cfg.json")
    return sha256_file(weights)


def _restore_source(folder: Path) -> str:
    """How to repair an import's source folder: this run only reads it."""
    other = run_dir_of_sae(folder)
    if other is not None and invocation(other) is not None:
        return f"it is the SAE {folder.name} of the run {other}: repair it there with {repair_command(other, 'train')}"
    return (f"restore {folder} from where it came (a copy, a download, another run's saes/<name>), or point load_from "
            "at an intact SAE folder; this run only reads it, so rerunning this run cannot repair it")


def load_source(cfg: ExperimentConfig, name: str, folder: Path, run_dir: Path) -> SAE:
    """The SAE in the source folder, refused (`ImportRefused`, naming the file and the key or tensor)
    when it is damaged, not representable, or has non-finite weights."""
    variant = cfg.instance(name).variant
    try:
        sae = load_sae(folder)
    except SAEFileError as e:
        raise ImportRefused(f"variants.{variant}.load_from: the SAE to import is damaged: {e.problem}; "
                            f"{_restore_source(folder)}; then rerun {repair_command(run_dir, 'train')}") from None
    except NotRepresentable as e:
        raise ImportRefused(f"variants.{variant}.load_from: {e}") from None
    if bad := nonfinite_problems(sae.weight_tensors()):  # a SAELens folder was checked on loading; a tsae one here
        raise ImportRefused(f"variants.{variant}.load_from: {folder / SAE_WEIGHTS}: {'; '.join(bad)}; an SAE with "
                            "non-finite weights gives non-finite codes: import an SAE whose training did not diverge")
    return sae


def check_fits(sae: SAE, folder: Path, store: Any, variant: str) -> None:
    """Refuse an SAE that does not read this run's activations (width, and hook where it names one)."""
    hook = store.manifest.get("source", {}).get("hook_name")
    own_hook = (sae.cfg.source or {}).get("hook_name")
    if sae.cfg.d_in != store.d_in:
        raise ImportRefused(f"variants.{variant}.load_from: the SAE in {folder} reads {sae.cfg.d_in}-dimensional "
                            f"activations, but this run's store holds {store.d_in}-dimensional ones (hook {hook!r}); "
                            "import SAEs trained on this run's model and hook")
    if own_hook and hook and own_hook != hook:
        raise ImportRefused(f"variants.{variant}.load_from: the SAE in {folder} was trained on {own_hook!r}, but this "
                            f"run harvests {hook!r}; set source.hook_name to {own_hook!r} or import an SAE of {hook!r}")


def import_variant(cfg: ExperimentConfig, name: str, store: Any, run_dir: Path, train_hash: str,
                   force: bool = False) -> dict[str, Any]:
    """Copy the SAE that `load_from` names into `saes/<name>/` (unless already there for the same
    `train_hash`, which covers the source's weights); returns a training's summary, with zero steps."""
    from tsae_core.checkpoints import trained_state

    inst = cfg.instance(name)
    folder = source_folder(cfg, name)
    digest = source_digest(folder)
    paths = TrainPaths.of(run_dir, name)
    if not force and trained_state(paths, train_hash)[0] == "trained":
        return {"variant": name, "skipped": True, **verify_sae_files(paths.sae_dir).get("training", {})}
    sae = load_source(cfg, name, folder, run_dir)
    check_fits(sae, folder, store, inst.variant)
    training = {"steps": 0, "tokens": 0, "imported_from": str(folder), "source_weights_sha256": digest,
                "source_format": "saelens" if is_saelens_folder(folder) else "tsae"}
    save_sae(sae.cpu(), paths.sae_dir, extra_cfg={"train_hash": train_hash, "variant_name": inst.variant, "seed": inst.seed,
                                                  "training": training},
             config_hash=cfg.hash())
    paths.failure.unlink(missing_ok=True)
    print(f"[tsae] {name}: imported from {folder} (not trained)", flush=True)
    return {"variant": name, "skipped": False, **training}
