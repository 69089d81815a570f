"""Training one SAE variant: schedule, guards, dead-latent tracking, checkpoints and curves.

The recipe (docs/design.md, "The training recipe"): Adam; linear warmup, constant, linear decay to zero over the final
`decay_fraction`; sparsity coefficient warmed up; global grad-norm clip; unit-norm decoder rows
with the parallel gradient removed (except the L1 recipe); AuxK on dead latents. A non-finite
loss stops training with `TrainingDiverged`, keeping the last good checkpoint. A training that
ends with every latent silent is recorded as failed (`failed.json`, with the reason) instead of
saved, so the other SAEs of a run go on. A killed run resumes exactly from its latest checkpoint;
Ctrl-C stops at the end of the current step and saves a checkpoint there first.

Under `torchrun` (`tsae_core.distributed`) every process trains the same SAE on its share of each
batch: gradients, loss terms and the batch's counts are combined across processes, and only rank 0
writes curves, checkpoints and the SAE.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tsae_core import distributed
from tsae_core.checkpoints import (
    TrainPaths,
    latest_checkpoint,
    load_checkpoint,
    record_failure,
    save_checkpoint,
    trained_state,
    truncate_curves,
)
from tsae_core.config import ExperimentConfig, Instance
from tsae_core.device import resolve_device, tf32_matmuls
from tsae_core.imported import import_variant, source_digest, source_folder
from tsae_core.interrupts import Interrupted, StepInterrupt
from tsae_core.io import DiskFull, is_disk_full
from tsae_core.prefetch import Prefetched
from tsae_core.progress import tqdm
from tsae_core.sae import PENALISED, SAE, LossContext, geometric_median, save_sae, verify_sae_files
from tsae_core.seeds import derive_seed
from tsae_core.sparse_codes import use_sparse_path
from tsae_core.target_l0 import DEFAULT_RATE, SparsityController
from tsae_core.variants.registry import build_sae, sae_config

CALIBRATION_BATCHES = 16
"""Batches used after training to fix inference statistics (batchtopk's threshold)."""
PREFETCH_BATCHES = 2
"""Batches read ahead on a GPU (none on the CPU, where the reading thread would share the training's cores)."""


class TrainingDiverged(RuntimeError):
    """The loss (or gradient) became NaN or infinite."""


class TrainingCollapsed(RuntimeError):
    """Training ended in an SAE that does nothing (no logged step, or every latent silent)."""


def lr_multiplier(step: int, total: int, warmup: int, decay_fraction: float) -> float:
    """Linear warmup over `warmup` steps, constant, linear decay to 0 over the last fraction."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    decay_start = total * (1.0 - decay_fraction)
    if decay_fraction > 0 and step >= decay_start:
        return warm * max(0.0, (total - step) / (total - decay_start))
    return warm


def sparsity_scale(step: int, total: int, warmup_fraction: float) -> float:
    n = warmup_fraction * total
    return min(1.0, (step + 1) / n) if n >= 1 else 1.0


class DeadLatentTracker:
    """Counts training tokens since each latent last fired; dead after `threshold` tokens."""

    def __init__(self, d_sae: int, threshold: int, device: torch.device):
        self.threshold = threshold
        self.tokens_since_fired_F = torch.zeros(d_sae, dtype=torch.long, device=device)

    def update(self, features_NF: torch.Tensor, n_tokens: int) -> None:
        self.update_fired((features_NF > 0).any(0), n_tokens)

    def update_fired(self, fired_F: torch.Tensor, n_tokens: int) -> None:
        self.tokens_since_fired_F += n_tokens
        self.tokens_since_fired_F.masked_fill_(fired_F, 0)  # no host sync on a GPU, unlike a boolean index

    @property
    def dead_F(self) -> torch.Tensor:
        return self.tokens_since_fired_F >= self.threshold


def firing(out: Any, mask_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F,) which latents fired on the batch's counted tokens, and how many codes were active there
    (a 0-d tensor on the codes' device: reading it is left to whoever needs the number, so a GPU
    step does not wait on it).

    On the sparse path they come from the kept codes alone, without reading the (N, F) code tensor."""
    codes = out.codes
    if codes is None:  # float passes: about 3x faster than a boolean gather of the counted tokens
        kept_NF = (torch.relu(out.features.detach()) * mask_BT.unsqueeze(-1)).flatten(0, -2)
        return kept_NF.amax(0) > 0, torch.count_nonzero(kept_NF)
    on_E = (codes.values.detach() > 0) & mask_BT.reshape(-1)[codes.rows()]
    fired_F = torch.zeros(codes.n_latents, dtype=torch.bool, device=on_E.device).index_fill_(0, codes.cols[on_E], True)
    return fired_F, on_E.sum()


def variant_train_hash(cfg: ExperimentConfig, name: str, data_hash: str) -> str:
    """What a trained SAE depends on: its variant, the recipe, the seed and the data; for an imported
    one (`load_from`), the bytes of the weights it was copied from too."""
    inst = cfg.instance(name)
    variant = {k: v for k, v in cfg.to_dict()["variants"][inst.variant].items() if k != "controls"}  # a label, not a knob
    parts = {"variant": variant, "train": cfg.to_dict()["train"], "seed": inst.seed, "data": data_hash}
    if cfg.variants[inst.variant].load_from:
        parts["imported_weights"] = source_digest(source_folder(cfg, name))
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_hash(store: Any) -> str:
    """The identity of the training data: the harvest hash its manifest was written for."""
    return store.manifest.get("tsae", {}).get("config_hash", "")


def trained_instances(cfg: ExperimentConfig, run_dir: Path, instances: list[Instance] | None = None) -> list[Instance]:
    """The SAEs of the run (or of `instances`) whose training did not fail: what evaluation and
    clustering can use. A failed training leaves `saes/<name>/failed.json` instead of the SAE."""
    chosen = cfg.instances() if instances is None else instances
    return [i for i in chosen if not TrainPaths.of(run_dir, i.name).failure.is_file()]


# --------------------------------------------------------------------------------------------


def _init_sae(cfg: ExperimentConfig, name: str, store: Any, device: torch.device) -> SAE:
    inst = cfg.instance(name)
    source = dict(store.manifest.get("source", {}), context_size=store.context_size)
    sae = build_sae(sae_config(cfg.variants[inst.variant], store.d_in, store.scaling_factor, source))
    # common random numbers: every variant of one seed draws its shared parameters from the same stream
    gen = torch.Generator().manual_seed(derive_seed(inst.seed, "init"))
    sample_ND = _token_sample(store, n_tokens=8192) * store.scaling_factor
    b_dec = None
    if cfg.train.b_dec_init != "zeros":
        b_dec = geometric_median(sample_ND) if cfg.train.b_dec_init == "geometric_median" else sample_ND.mean(0)
    sae.reset_parameters(gen, b_dec=b_dec)
    sae.init_from_sample(sample_ND)
    return sae.to(device)


def _token_sample(store: Any, n_tokens: int) -> torch.Tensor:
    chunks, total = [], 0
    for batch in store.split("train").batches(batch_sequences=16):
        chunks.append(batch.acts_BTD[batch.mask_BT])
        total += chunks[-1].shape[0]
        if total >= n_tokens:
            break
    return torch.cat(chunks)[:n_tokens].float()


def sparse_path_for(sae: SAE, setting: str, device: torch.device) -> bool:
    """Whether `sae` trains through the sparse path (`train.sparse_codes`), unless a loss of its own
    reads every latent's code or pre-activation (`SAE.uses_codes_in_loss`)."""
    return use_sparse_path(setting, sae.cfg.activation, sae.cfg.d_sae, device) and not sae.uses_codes_in_loss


def make_optimizer(sae: SAE, lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """Adam over the SAE's parameter groups, fused: one pass over each parameter instead of a
    dozen elementwise kernels (about 5x faster on CPU at 768 x 16384, where Adam's foreach form
    cost as much as the encoder's matmul)."""
    return torch.optim.Adam(sae.param_groups(), lr=lr, betas=betas, fused=True)


def training_step(sae: SAE, opt: torch.optim.Optimizer, batch: Any, ctx: LossContext, grad_clip: float,
                  autocast: Any, on_nonfinite: Any = None) -> tuple[Any, dict[str, torch.Tensor]]:
    """One optimizer step of the recipe: forward, loss terms, backward, parallel decoder gradient
    removed, global-norm clip, Adam, decoder rows renormalised, the variant's after-step hook.
    `on_nonfinite(terms, grad_norm)` is called (and must raise) before a non-finite step is taken."""
    with autocast:
        out = sae(batch.acts_BTD, batch.mask_BT, batch.doc_start_BT, batch.position_BT)
        terms = {k: t.float() for k, t in sae.loss_terms(out, ctx).items()}
    loss = sum(terms.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if distributed.active():  # every rank's gradients become the whole batch's, and so do the terms
        terms = distributed.reduce_gradients(sae.parameters(), terms, ctx.mask_BT.sum())
        loss = sum(terms.values())
    sae.remove_parallel_decoder_grad()
    grad_norm = torch.nn.utils.clip_grad_norm_(sae.parameters(), grad_clip)
    if on_nonfinite is not None and not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        on_nonfinite(terms, grad_norm)
    opt.step()
    sae.normalize_decoder()
    sae.after_step(out, ctx)
    distributed.sync_buffers(sae)
    return out, terms


def train_variant(cfg: ExperimentConfig, name: str, store: Any, run_dir: Path, progress: bool = True,
                  force: bool = False) -> dict[str, Any]:
    """Train (or resume, or skip if already trained) the SAE `name`; returns a summary dict.

    Skipped when its files are intact (checksum) and were trained with these parameters, unless
    `force`. A collapsed training is recorded (`failed.json`) and returned with `failed` set; Ctrl-C
    saves a checkpoint at the end of the current step and raises `Interrupted`."""
    v = cfg.variants[cfg.instance(name).variant]
    paths = TrainPaths.of(run_dir, name)
    train_hash = variant_train_hash(cfg, name, data_hash(store))
    if v.load_from:  # an existing SAE, brought in: nothing to train
        imported = import_variant(cfg, name, store, run_dir, train_hash, force) if distributed.is_main() else {"variant": name}
        distributed.barrier()  # its files are written before any rank goes on
        return imported
    state, why = trained_state(paths, train_hash)
    if not force and state == "trained":
        return {"variant": name, "skipped": True, **verify_sae_files(paths.sae_dir).get("training", {})}
    if not force and state == "failed":
        return {"variant": name, "skipped": True, "failed": why}
    if state == "missing" and (paths.sae_dir / "cfg.json").is_file() and distributed.is_main():
        print(f"[tsae] {why}; retraining {name}", file=sys.stderr, flush=True)  # a repair: shown on the terminal

    run = _Training(cfg, name, store, paths, train_hash)
    paths.curves.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=cfg.train.steps, initial=run.start, desc=f"train {name}", disable=not progress or not run.main, unit="step")
    started = time.perf_counter()
    curves = paths.curves.open("a") if run.main else contextlib.nullcontext()
    with run.batches:  # the read-ahead thread, if any, ends with the training, however it ends
        with curves as curves_file, StepInterrupt() as interrupt, tf32_matmuls(run.device):
            last_record = run.take_steps(bar, curves_file, interrupt, started)
        bar.close()
        run.sae.calibrate([next(run.batches) for _ in range(CALIBRATION_BATCHES)])
    distributed.sync_buffers(run.sae)  # BatchTopK: the mean of the ranks' calibrated thresholds
    return run.finish(store.context_size, last_record, seconds=time.perf_counter() - started)


class _Training:
    """One SAE's training under way: the objects its steps, checkpoints, summary and saving share."""

    def __init__(self, cfg: ExperimentConfig, name: str, store: Any, paths: TrainPaths, train_hash: str):
        """Build the SAE, its optimizer, data, dead-latent tracker and controller, resumed from the newest checkpoint."""
        tc, inst = cfg.train, cfg.instance(name)
        v = cfg.variants[inst.variant]
        device = resolve_device(cfg.run.device)
        sae = _init_sae(cfg, name, store, device)
        sae.sparse_path = sparse_path_for(sae, tc.sparse_codes, device)
        lr = v.lr or v.default_lr * tc.lr_scale  # an explicit lr is taken as it is
        opt = make_optimizer(sae, lr, tc.adam_betas)
        loader = store.split("train").loader(tc.batch_sequences, seed=derive_seed(inst.seed, "data"),
                                             part=distributed.batch_share(tc.batch_sequences))
        tracker = DeadLatentTracker(v.d_sae, tc.dead_after_tokens, device)
        controller = _controller(cfg, v, sae, lr)
        start = _resume(paths, train_hash, device, sae, opt, loader, tracker, controller)
        distributed.broadcast_state(sae)
        main = distributed.is_main()  # rank 0: the process that writes curves, checkpoints and the SAE
        if main:
            truncate_curves(paths.curves, start if start else -1)
        self.batches = Prefetched(loader, device, ahead=PREFETCH_BATCHES if device.type == "cuda" else 0)
        self.cfg, self.tc, self.inst, self.paths, self.train_hash, self.device = cfg, tc, inst, paths, train_hash, device
        self.sae, self.lr, self.opt, self.tracker, self.controller, self.start, self.main = sae, lr, opt, tracker, controller, start, main

    def checkpoint(self, step: int) -> None:
        """Save (on rank 0) everything that resuming at `step` needs."""
        if self.main:
            save_checkpoint(self.paths, step, {
                "train_hash": self.train_hash, "sae": self.sae.state_dict(), "optimizer": self.opt.state_dict(),
                "loader": self.batches.state_dict(), "tokens_since_fired": self.tracker.tokens_since_fired_F.cpu(),
                "variant_state": self.sae.training_state(), "controller": self.controller.state_dict() if self.controller else None})

    def take_steps(self, bar: Any, curves_file: Any, interrupt: StepInterrupt, t0: float) -> dict[str, Any]:
        """Train from `start` to the last step, logging curves and saving checkpoints; returns the last curve record."""
        tc, sae, tracker, controller, name = self.tc, self.sae, self.tracker, self.controller, self.inst.name
        autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        last_record: dict[str, Any] = {}
        tokens_since_log = 0
        for step in range(self.start, tc.steps):
            batch = next(self.batches)
            lr_now = self.lr * lr_multiplier(step, tc.steps, tc.warmup_steps, tc.decay_fraction)
            for group in self.opt.param_groups:
                group["lr"] = lr_now * group.get("lr_multiplier", 1.0)
            ctx = LossContext(batch.mask_BT, batch.doc_start_BT, sparsity_scale(step, tc.steps, tc.sparsity_warmup_fraction),
                              tracker.dead_F, step=step, seed=self.inst.seed,
                              penalty_coefficient=controller.coefficient if controller else None, doc_id_BT=batch.doc_id_BT)
            out, terms = training_step(sae, self.opt, batch, ctx, tc.grad_clip, autocast,
                                       on_nonfinite=lambda terms, g, step=step: _diverged(name, step, terms, g, self.paths))

            fired_F, active_codes = firing(out, batch.mask_BT)
            counts = distributed.BatchCounts.of(fired_F, active_codes, self.batches.counted_tokens, interrupt.requested)
            tracker.update_fired(counts.fired_F, counts.n_tokens)
            if controller:
                controller.update(step, counts.l0())
            tokens_since_log += counts.n_tokens
            done = step + 1
            if done % tc.log_every == 0 or done == tc.steps:
                elapsed = max(time.perf_counter() - t0, 1e-9)
                last_record = _record(done, terms, out, batch, counts, tracker, lr_now, ctx, tokens_since_log / elapsed, tc)
                last_record.update(sae.curve_values())
                if self.main:
                    _append_line(curves_file, self.paths.curves, json.dumps(last_record))
                bar.set_postfix(loss=f"{last_record['loss']:.3g}", l0=f"{last_record['l0']:.1f}", dead=f"{last_record['dead_fraction']:.2f}")
                t0, tokens_since_log = time.perf_counter(), 0
            if (tc.checkpoint_every and done % tc.checkpoint_every == 0 and done < tc.steps) or (counts.stop and done < tc.steps):
                self.checkpoint(done)
            bar.update(1)
            if counts.stop and done < tc.steps:
                bar.close()
                distributed.barrier()  # rank 0's checkpoint is on disk before any process exits
                raise Interrupted(f"training of {name} interrupted at step {done} of {tc.steps}; a checkpoint was saved "
                                  f"there, rerun to resume from step {done}")
        return last_record

    def finish(self, context_size: int, last_record: dict[str, Any], seconds: float) -> dict[str, Any]:
        """Summarise the training, then save the SAE (rank 0), or record in `failed.json` that it collapsed; returns the summary."""
        tc, controller, name, paths, main = self.tc, self.controller, self.inst.name, self.paths, self.main
        training = {
            "steps": tc.steps, "tokens": tc.steps * tc.batch_sequences * context_size, "lr": self.lr,
            "final": {k: last_record.get(k) for k in ("loss", "fvu", "l0", "dead_fraction")}, "resumed_from": self.start,
            "seconds": round(seconds, 1), "device": str(self.device),
        }
        if controller:
            training["target_l0"] = {"target": controller.target, "start_coefficient": controller.start_coefficient,
                                     "final_coefficient": controller.coefficient, "rate": controller.rate, "horizon": controller.horizon,
                                     "control_steps": [controller.start_step, controller.freeze_step]}
            self.sae.set_penalty_coefficient(controller.coefficient)
        try:
            _assert_healthy_training(name, training)
        except TrainingCollapsed as e:
            if main:
                record_failure(paths, self.train_hash, str(e), training)
                shutil.rmtree(paths.checkpoints, ignore_errors=True)
                print(f"[tsae] {e}; recorded in {paths.failure}, the other SAEs go on", file=sys.stderr, flush=True)
            distributed.barrier()
            return {"variant": name, "skipped": False, "failed": str(e), **training}
        if main:
            save_sae(self.sae.cpu(), paths.sae_dir, extra_cfg={"train_hash": self.train_hash, "variant_name": self.inst.variant,
                                                               "seed": self.inst.seed, "training": training},
                     config_hash=self.cfg.hash())
            paths.failure.unlink(missing_ok=True)
            shutil.rmtree(paths.checkpoints, ignore_errors=True)
        distributed.barrier()  # the files are written before any rank goes on (or exits)
        return {"variant": name, "skipped": False, **training}


def _controller(cfg: ExperimentConfig, v: Any, sae: SAE, lr: float) -> SparsityController | None:
    """The target-L0 controller of a penalised SAE with a target; None otherwise (fixed coefficient, or TopK)."""
    if v.activation not in PENALISED or v.target_l0 <= 0:
        return None
    rate = v.target_l0_rate or DEFAULT_RATE[v.activation]
    return SparsityController.for_training(v.target_l0, sae.penalty_coefficient, rate, cfg.train.steps, cfg.train.decay_fraction,
                                           lr=lr, warmup_steps=cfg.train.warmup_steps, two_sided=v.activation == "jumprelu")


def _resume(paths: TrainPaths, train_hash: str, device: torch.device, sae: SAE, opt: torch.optim.Optimizer,
            loader: Any, tracker: DeadLatentTracker, controller: SparsityController | None = None) -> int:
    """Load the newest readable checkpoint of this training into the given objects; returns its step
    (0 without one; checkpoints of other parameters are removed)."""
    state = load_checkpoint(paths, device)
    if state is None:
        return 0
    if state.get("train_hash") != train_hash:  # checkpoints of another configuration: start afresh
        shutil.rmtree(paths.checkpoints, ignore_errors=True)  # (every rank of a process group tries)
        return 0
    sae.load_state_dict(state["sae"])
    opt.load_state_dict(state["optimizer"])
    loader.load_state_dict(state["loader"])
    tracker.tokens_since_fired_F.copy_(state["tokens_since_fired"].to(device))
    sae.load_training_state({k: t.to(device) for k, t in state.get("variant_state", {}).items()})
    if controller is not None:
        controller.load_state_dict(state.get("controller") or controller.state_dict())
    return int(state["step"])


def _append_line(f: Any, path: Path, line: str) -> None:
    try:
        f.write(line + "\n")
        f.flush()
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull.writing(path) from None
        raise


def _record(step, terms, out, batch, counts, tracker, lr_now, ctx, tok_per_s, tc) -> dict[str, Any]:
    D = out.x_normalized.shape[-1]
    mask_N = batch.mask_BT.reshape(-1)
    with torch.no_grad():
        fvu = distributed.fraction_unexplained(out.x_normalized.reshape(-1, D).float(), out.recon_normalized.reshape(-1, D).float(), mask_N)
    return {
        "step": step,
        "tokens": step * tc.batch_sequences * batch.acts_BTD.shape[1],
        "loss": float(sum(t.item() for t in terms.values())),
        **{f"loss_{k}": float(t.item()) for k, t in terms.items()},
        "fvu": float(fvu),
        "l0": counts.l0(),
        "dead_fraction": float(tracker.dead_F.float().mean()),
        "lr": lr_now,
        "sparsity_scale": ctx.sparsity_scale,
        **({} if ctx.penalty_coefficient is None else {"penalty_coefficient": ctx.penalty_coefficient}),
        "tokens_per_s": tok_per_s,
    }


def _diverged(name: str, step: int, terms: dict[str, torch.Tensor], grad_norm: torch.Tensor, paths: TrainPaths) -> None:
    ckpt = latest_checkpoint(paths)
    kept = f"the last good checkpoint is kept at {ckpt}" if ckpt else "no checkpoint had been written yet"
    values = ", ".join(f"{k}={t.item():.4g}" for k, t in terms.items())
    raise TrainingDiverged(
        f"variant {name!r}: non-finite loss or gradient at step {step} ({values}, grad_norm={grad_norm.item():.4g}); "
        f"{kept}. Lower the learning rate (variants.{name}.lr or train.lr_scale), raise train.warmup_steps, "
        f"or check the activations for outliers."
    )


def _assert_healthy_training(name: str, training: dict[str, Any]) -> None:
    """Refuse to save an SAE that silently failed: no steps, no firing latents."""
    final = training["final"]
    if training["steps"] <= 0 or final.get("l0") is None:
        raise TrainingCollapsed(f"variant {name!r}: training ran no logged steps; check train.steps and the data")
    if final["l0"] == 0:
        raise TrainingCollapsed(
            f"variant {name!r}: every latent is silent at the end of training (L0 = 0); "
            f"lower variants.{name}.l1_coefficient or check the learning rate"
        )
