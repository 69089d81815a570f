"""The base sparse autoencoder and its files. Its config, named output and loss context live in
`tsae_core.sae_types` and are importable from here too.

With x the raw activation and s the dataset scaling factor (so that E||s x|| = sqrt(d_in)):

    x_n   = s x
    pre   = (x_n - b_dec) W_enc + b_enc                       (B, T, F)
    f     = act(pre)                                          relu | topk | batchtopk
    x_n^  = f W_dec + b_dec ;   x^ = x_n^ / s                 (B, T, D)

Weights live in the normalised space; `cfg.activation_scaling_factor` holds s (SAELens folds it
into the weights on export). Temporal variants subclass `SAE`, add a term to the encoder or the
decoder and add loss terms in `loss_terms`; they are registered in `variants/registry.py`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from tsae_core import losses, sparse_codes
from tsae_core.activations import make_activation
from tsae_core.io import provenance, read_json, save_tensors, sha256_file, write_json
from tsae_core.linear import centered_linear
from tsae_core.sae_types import LossContext, OutputStatistics, SAEConfig, SAEOutput
from tsae_core.sparse_codes import SparseCodes
from tsae_core.typed import ConfigError, build
from tsae_core.variant_config import VariantConfig

PENALTY_KEY = {"relu": "l1_coefficient", "jumprelu": "l0_coefficient"}
"""Activations whose sparsity comes from a penalty (and so can be given a target L0), and the cfg key of its coefficient."""
PENALISED = tuple(PENALTY_KEY)

SAE_WEIGHTS = "sae.safetensors"
SAE_CFG = "cfg.json"


PAPER_BANDWIDTH = 0.001
"""JumpReLU's straight-through bandwidth in the paper's units, inputs scaled to E||x||^2 = 1
(Rajamanoharan et al. 2024, "Jumping Ahead"; Gemma Scope uses the same)."""


def paper_bandwidth(d_in: int) -> float:
    """The paper's bandwidth in tsae's units: pre-activations scale with the input, and tsae scales
    inputs to E||x|| = sqrt(d_in) (E||x||^2 ~ d_in), so 0.001 there is 0.001 sqrt(d_in) here."""
    return PAPER_BANDWIDTH * math.sqrt(d_in)


class SAE(nn.Module):
    """Token-wise SAE (architecture `standard`); the base every temporal variant extends."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # jumprelu's thresholds start where latents fire `target_l0` times per token when it has one
        k = max(1, round(cfg.target_l0)) if cfg.activation == "jumprelu" and cfg.target_l0 > 0 else cfg.k or 1
        self.activation = make_activation(cfg.activation, k, d_sae, bandwidth=cfg.bandwidth or paper_bandwidth(d_in))
        self.options = self.parse_options(cfg.options)
        self.sparse_path = False
        """Train through `tsae_core.sparse_codes` (the TopK family; set from `train.sparse_codes`)."""
        self.reset_parameters(torch.Generator().manual_seed(0))

    # -- options -------------------------------------------------------------------------------
    Options: type | None = None
    """A frozen dataclass of the variant's knobs (doc line per field, checks in `__post_init__`); None: no knobs."""

    @classmethod
    def parse_options(cls, options: dict[str, Any]) -> Any:
        """`options` of the params file -> the typed `Options` (ConfigError naming the key if invalid)."""
        if cls.Options is None:
            if options:
                raise ConfigError(f"options: this architecture takes no options, got {sorted(options)}")
            return None
        return build(cls.Options, options, "options")

    @classmethod
    def validate_options(cls, v: VariantConfig) -> None:
        """Reject variant options this architecture does not know or whose values are invalid."""
        cls.parse_options(v.options)

    # -- initialisation ------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator, b_dec: torch.Tensor | None = None) -> None:
        """Random unit decoder rows (norm 0.1 in the L1 recipe), encoder = decoder transpose."""
        W = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator)
        W = W / W.norm(dim=-1, keepdim=True)
        if not self.cfg.unit_norm_decoder:
            W = 0.1 * W
        self.W_dec.copy_(W)
        self.W_enc.copy_(W.T)
        self.b_enc.zero_()
        self.b_dec.copy_(b_dec if b_dec is not None else torch.zeros(self.cfg.d_in))

    # -- declared capabilities -------------------------------------------------------------------
    token_wise: ClassVar[bool] = True
    """Inference is the token-wise SAE's: each token encoded on its own by the linear encoder and the
    activation, reconstructed by the linear decoder of its code. SAELens can hold such an SAE (`tsae
    export` writes it; `tsae_core.interop`). A class whose encoder, forward pass or reconstruction reads
    other tokens declares False and says how in `reads_other_tokens`. Declared, not inferred from the
    methods a class overrides: an override that computes the same thing faster keeps it True (a test
    compares every token-wise architecture's output with the standard SAE's)."""
    reads_other_tokens: ClassVar[str] = ""
    """For a class that is not `token_wise`: how its inference departs from the token-wise SAE's."""
    causal: ClassVar[bool] = True
    """The code and reconstruction of token t read tokens up to t only: what a clamp at t may hand a
    causal language model (the unlearning eval needs it). The crosscoder's window reads later tokens."""

    @property
    def linear_encoder(self) -> bool:
        """True when the pre-activations are the base linear map (x_n - b_dec) W_enc + b_enc alone, so
        that the sparse training path can take the encoder's gradient at the kept codes only. A variant
        whose encoder adds anything (other tokens, positions) says False; a control whose knobs reduce
        it to the token-wise SAE (`pooled` with `window: 1`) says True and then runs the base's code."""
        return self.token_wise

    @property
    def uses_codes_in_loss(self) -> bool:
        """True when a loss term of the variant reads the dense codes or pre-activations of every latent
        (a temporal term on codes): then training stays on the dense path, where every pre-activation
        carries its gradient."""
        return False

    # -- forward -------------------------------------------------------------------------------
    def encode_pre(
        self, x_n_BTD: torch.Tensor, doc_start_BT: torch.Tensor | None = None, position_BT: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pre-activations; temporal variants add a term that uses earlier positions of the same
        document (`doc_start_BT` marks where documents begin, `position_BT` counts tokens from it;
        see `tsae_core.sequence` for the defaults when they are None)."""
        return centered_linear(x_n_BTD, self.b_dec, self.W_enc, self.b_enc)  # (x_n - b_dec) W_enc + b_enc

    def encode_pre_masked(
        self, x_n_BTD: torch.Tensor, mask_BT: torch.Tensor | None, doc_start_BT: torch.Tensor | None, position_BT: torch.Tensor | None
    ) -> torch.Tensor:
        """Pre-activations of a batch whose special tokens are known (`mask_BT` False at BOS, EOS,
        padding; None: every token counts). An encoder that reads earlier tokens overrides this to keep
        special tokens (a model's outsized BOS activation) out of what it reads; default `encode_pre`."""
        return self.encode_pre(x_n_BTD, doc_start_BT, position_BT)

    def decode(self, features_BTF: torch.Tensor) -> torch.Tensor:
        return features_BTF @ self.W_dec + self.b_dec

    def forward(
        self,
        x_BTD: torch.Tensor,
        mask_BT: torch.Tensor | None = None,
        doc_start_BT: torch.Tensor | None = None,
        position_BT: torch.Tensor | None = None,
    ) -> SAEOutput:
        """x (B, T, D) or (N, D) raw activations -> SAEOutput.

        `mask_BT` (True = token counts) keeps excluded tokens out of batchtopk's budget;
        `doc_start_BT` and `position_BT` are used by temporal variants only (None: each sequence is
        one document starting at its first token)."""
        squeeze = x_BTD.dim() == 2
        if squeeze:
            x_BTD = x_BTD.unsqueeze(0)
            mask_BT, doc_start_BT, position_BT = (None if t is None else t.unsqueeze(0) for t in (mask_BT, doc_start_BT, position_BT))
        s = self.cfg.activation_scaling_factor
        x_n = x_BTD * s
        if self.sparse_path and self.training:
            out = self._sparse_forward(x_n, mask_BT, doc_start_BT, position_BT)
        else:
            mask_N = None if mask_BT is None else mask_BT.reshape(-1)
            pre = self.encode_pre_masked(x_n, mask_BT, doc_start_BT, position_BT)
            B, T, F = pre.shape
            features = self.activation(pre.reshape(B * T, F), mask_N).view(B, T, F)
            recon_n = self.decode(features)
            out = SAEOutput(features, recon_n / s, pre, x_n, recon_n)
        if squeeze:  # codes and pick index the flattened tokens, the same with or without the batch axis
            out = SAEOutput(*(t.squeeze(0) for t in (out.features, out.recon, out.pre_acts, out.x_normalized, out.recon_normalized)),
                            extras=out.extras, codes=out.codes, pick=out.pick)  # extras keep their batch axis
        return out

    def _sparse_forward(self, x_n_BTD: torch.Tensor, mask_BT: torch.Tensor | None, doc_start_BT: torch.Tensor | None,
                        position_BT: torch.Tensor | None) -> SAEOutput:
        """The training forward pass of `tsae_core.sparse_codes`: the same output as the dense one.

        A variant with the base linear encoder gets the sparse encoder backward too; one whose
        encoder reads other tokens keeps its dense encoder graph and gets the sparse decoder only."""
        B, T, D = x_n_BTD.shape
        mask_N = None if mask_BT is None else mask_BT.reshape(-1)
        x_n_ND = x_n_BTD.reshape(B * T, D)
        if self.linear_encoder:
            with torch.no_grad():
                pre_NF = self.encode_pre(x_n_ND)
            pick = sparse_codes.linear_picks(pre_NF, x_n_ND, self.W_enc, self.b_enc, self.b_dec)
        else:
            pre_NF = self.encode_pre_masked(x_n_BTD, mask_BT, doc_start_BT, position_BT).reshape(B * T, -1)

            def pick(cols: torch.Tensor, offsets: torch.Tensor, within: torch.Tensor | None = None) -> torch.Tensor:
                return pre_NF[sparse_codes.rows_of(offsets), cols]  # autograd through the encoder's graph
        codes: SparseCodes = self.activation.sparse(pre_NF, mask_N, pick)
        recon_n = (sparse_codes.decode(codes, self.W_dec) + self.b_dec).view(B, T, D)
        s = self.cfg.activation_scaling_factor
        return SAEOutput(None, recon_n / s, pre_NF.view(B, T, -1), x_n_BTD, recon_n, codes=codes, pick=pick)

    # -- losses --------------------------------------------------------------------------------
    def loss_terms(self, out: SAEOutput, ctx: LossContext) -> dict[str, torch.Tensor]:
        """Weighted loss terms by name; the training objective is their sum. Variants add theirs to
        `super().loss_terms(...)` (or replace `reconstruction_term`)."""
        D, F = self.cfg.d_in, self.cfg.d_sae
        x_ND, recon_ND = out.x_normalized.reshape(-1, D), out.recon_normalized.reshape(-1, D)
        mask_N = ctx.mask_BT.reshape(-1)
        terms = {"recon": self.reconstruction_term(out, mask_N)}
        coefficient = self.penalty_coefficient if ctx.penalty_coefficient is None else ctx.penalty_coefficient
        if self.cfg.activation == "relu":
            l1 = losses.l1_decoder_weighted(out.features.reshape(-1, F), self.W_dec, mask_N)
            terms["l1"] = ctx.sparsity_scale * coefficient * l1
        if self.cfg.activation == "jumprelu":
            l0 = losses.masked_mean(self.activation.l0_N(out.pre_acts.reshape(-1, F)), mask_N)
            target = self.cfg.target_l0
            # with a target the penalty pulls from both sides and vanishes there: a JumpReLU SAE can sit
            # below its target with no penalty at all (its thresholds rise while codes are still noisy)
            penalty = (l0 / target - 1.0).pow(2) if target > 0 else l0
            terms["l0"] = ctx.sparsity_scale * coefficient * penalty
            if self.cfg.pre_act_coefficient > 0:
                gap = losses.threshold_gap(out.pre_acts.reshape(-1, F), self.activation.threshold, mask_N)
                terms["pre_act"] = self.cfg.pre_act_coefficient * gap
        if self.cfg.activation in ("topk", "batchtopk") and self.cfg.aux_k_coefficient > 0 and ctx.dead_F is not None:
            aux = losses.aux_k(x_ND - recon_ND, out.pre_acts.reshape(-1, F), ctx.dead_F, self.W_dec, self.cfg.aux_k, mask_N,
                               pick=out.pick)
            terms["aux_k"] = self.cfg.aux_k_coefficient * aux
        return terms

    @property
    def penalty_coefficient(self) -> float:
        """The coefficient of the sparsity penalty (L1 for relu, L0 for jumprelu; 0 for the TopK family)."""
        key = PENALTY_KEY.get(self.cfg.activation)
        return getattr(self.cfg, key) if key else 0.0

    def set_penalty_coefficient(self, coefficient: float) -> None:
        """Record the coefficient a target-L0 controller ended at in the cfg (saved to cfg.json)."""
        self.cfg = dataclasses.replace(self.cfg, **{PENALTY_KEY[self.cfg.activation]: float(coefficient)})

    def reconstruction_term(self, out: SAEOutput, mask_N: torch.Tensor) -> torch.Tensor:
        """E ||x - x_hat||^2 in the normalised space (Matryoshka variants sum it over prefixes)."""
        D = self.cfg.d_in
        return losses.reconstruction(out.x_normalized.reshape(-1, D), out.recon_normalized.reshape(-1, D), mask_N)

    # -- training-time state and hooks (variants override) ---------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups; `lr_multiplier` scales the schedule's learning rate in a group.

        JumpReLU's thresholds get `threshold_lr_multiplier`: under Adam a parameter moves about lr per
        step, so at SAE learning rates log-thresholds would need ~10^4 steps to move by one unit."""
        thresholds = [p for n, p in self.named_parameters() if n == "activation.log_threshold"]
        rest = [p for n, p in self.named_parameters() if n != "activation.log_threshold"]
        groups: list[dict[str, Any]] = [{"params": rest, "lr_multiplier": 1.0}]
        if thresholds:
            groups.append({"params": thresholds, "lr_multiplier": self.cfg.threshold_lr_multiplier})
        return groups

    @torch.no_grad()
    def init_from_sample(self, x_n_ND: torch.Tensor) -> None:
        """After `reset_parameters`: fit data-dependent initial values (jumprelu's thresholds). The sample
        holds unrelated tokens: an encoder that reads other tokens sees each as a document of its own."""
        if self.activation.fits_to_data:
            x_BTD = x_n_ND.unsqueeze(0) if self.token_wise else x_n_ND.unsqueeze(1)
            self.activation.init_from_sample(self.encode_pre(x_BTD).reshape(x_n_ND.shape[0], -1))

    @torch.no_grad()
    def after_step(self, out: SAEOutput, ctx: LossContext) -> None:
        """Called after each optimizer step with that step's (detached-use) output: queues, regrouping."""

    def training_state(self) -> dict[str, torch.Tensor]:
        """Training-only state that is not part of the SAE (a negative queue); saved in checkpoints."""
        return {}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"unexpected training state {sorted(state)} for architecture {self.cfg.architecture!r}")

    def curve_values(self) -> dict[str, float]:
        """Variant-specific numbers of the last training step, logged with each curve record (e.g. how
        many same-document negatives the contrastive term masked); read only at logging steps."""
        return {}

    def extra_metrics(self) -> dict[str, Any]:
        """Variant-specific numbers for `eval/<variant>.json` (e.g. orthogonal groups' condition numbers)."""
        return {}

    @torch.no_grad()
    def causal_reconstruction(
        self, x_BTD: torch.Tensor, mask_BT: torch.Tensor, doc_start_BT: torch.Tensor | None = None,
        position_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, D) each token's reconstruction from itself and earlier tokens only: what may be spliced
        into a language model, whose position t must not see later tokens. A variant whose code reads
        later tokens (the crosscoder's window) overrides it."""
        return self(x_BTD, mask_BT, doc_start_BT, position_BT).recon

    def output_statistics(self) -> OutputStatistics | None:
        """A fresh accumulator of variant-specific numbers over the eval data (`variant_metrics` in
        `eval/<variant>.json`), fed every eval batch's output; None: the variant has none."""
        return None

    def decoder_directions(self) -> torch.Tensor:
        """(F, D): the one direction in input space that each latent writes, matched against true
        features and used to name latents; a variant whose latent writes several (one per position)
        says which direction stands for it."""
        return self.W_dec

    @torch.no_grad()
    def calibrate(self, batches: list) -> None:
        """Fix inference-time statistics from final-weight batches (batchtopk's threshold)."""
        if not self.activation.calibrated:
            return
        pre_batches = []
        for b in batches:
            pre = self.encode_pre_masked(b.acts_BTD * self.cfg.activation_scaling_factor, b.mask_BT, b.doc_start_BT, b.position_BT)
            pre_batches.append((pre.reshape(-1, self.cfg.d_sae), b.mask_BT.reshape(-1)))
        self.activation.calibrate(pre_batches)

    # -- decoder-norm handling (unit-norm recipe) -----------------------------------------------
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component along each (unit) decoder row before the step."""
        if self.cfg.unit_norm_decoder and self.W_dec.grad is not None:
            W, grad = self.W_dec, self.W_dec.grad  # grad -= (grad . W) W, row-wise, without a full-size temporary
            grad.addcmul_(torch.linalg.vecdot(grad, W).unsqueeze(-1), W, value=-1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if self.cfg.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    # -- files ---------------------------------------------------------------------------------
    def weight_tensors(self) -> dict[str, torch.Tensor]:
        """SAELens tensor names and orientation, `threshold` where the activation has one, and any
        variant-specific tensors under their own names."""
        # parameters and persistent buffers (non-persistent ones are training-only state)
        tensors = {name: t.detach() for name, t in self.state_dict().items() if not name.startswith("activation.")}
        tensors.update(self.activation.export_tensors())
        return tensors

    def load_weight_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        state = dict(tensors)
        if "threshold" in state:
            self.activation.import_tensors({"threshold": state.pop("threshold")})
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.startswith("activation.")]
        if missing or unexpected:
            raise ValueError(f"SAE weights do not match the config: missing {missing}, unexpected {unexpected}")


def geometric_median(points_ND: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld iterations: argmin_y sum_i ||x_i - y||, robust to outlying tokens."""
    y = points_ND.mean(0)
    for _ in range(iters):
        w = 1.0 / (points_ND - y).norm(dim=-1).clamp_min(eps)
        y_next = (w.unsqueeze(-1) * points_ND).sum(0) / w.sum()
        if (y_next - y).norm() < eps * max(1.0, float(y.norm())):
            return y_next
        y = y_next
    return y


class SAEFileError(FileNotFoundError):
    """An SAE's files are missing, unreadable or fail their checksum; the message names the file and the
    fix, `problem` the same without the fix (for a caller that knows a better one)."""

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem or message


def sae_fix(directory: str | Path, missing: bool = False) -> str:
    """How to repair (or, `missing`, make) the SAE in `directory`: its run's train stage
    (`tsae_core.repair`), which retrains, or imports again, the SAEs whose files fail their check; a
    folder outside a run is replaced."""
    from tsae_core.repair import repair_command, run_dir_of_sae

    run_dir = run_dir_of_sae(directory)
    if run_dir is None:
        return (f"train this SAE first, or point to a folder that holds one ({SAE_CFG} and {SAE_WEIGHTS})" if missing else
                f"replace {directory} with an intact copy of the SAE (no run trains this folder)")
    if missing:
        return f"train this SAE first: {repair_command(run_dir, 'train')}"
    return (f"retrain it: {repair_command(run_dir, 'train')} (the train stage retrains, or imports again, the SAEs "
            "whose files fail their check)")


def damaged_sae(directory: str | Path, problem: str) -> SAEFileError:
    return SAEFileError(f"{problem}; {sae_fix(directory)}", problem)


def save_sae(sae: SAE, directory: str | Path, extra_cfg: dict[str, Any] | None = None, config_hash: str | None = None) -> None:
    """Write `sae.safetensors` and `cfg.json` atomically (the weights first, the cfg last); cfg.json
    records the weights' sha256, checked whenever the SAE is loaded or its training skipped."""
    directory = Path(directory)
    sha256 = save_tensors(directory / SAE_WEIGHTS, sae.weight_tensors(), metadata={"format": "pt"})
    cfg = {**dataclasses.asdict(sae.cfg), **(extra_cfg or {}), "weights_sha256": sha256}
    write_json(directory / SAE_CFG, cfg, stamp=provenance(config_hash))


def read_sae_cfg(directory: str | Path) -> dict[str, Any]:
    """The cfg.json of `saes/<variant>/` as a dict; `SAEFileError` naming the file if it is missing or unreadable."""
    path = Path(directory) / SAE_CFG
    if not path.is_file():
        raise SAEFileError(f"{path} is missing; {sae_fix(path.parent, missing=True)}", f"{path} is missing")
    try:
        raw = read_json(path)
    except (OSError, ValueError) as e:
        raise damaged_sae(path.parent, f"unreadable SAE config {path} ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise damaged_sae(path.parent, f"unreadable SAE config {path} (expected a JSON object, found {type(raw).__name__})")
    return raw


def recorded_weights_sha256(directory: str | Path) -> str | None:
    """The weights' sha256 recorded in `directory/cfg.json`, or None (no cfg, unreadable, older tsae)."""
    try:
        sha = read_sae_cfg(directory).get("weights_sha256")
    except SAEFileError:
        return None
    return sha if isinstance(sha, str) else None


def verify_sae_files(directory: str | Path) -> dict[str, Any]:
    """Check that `sae.safetensors` matches the sha256 recorded in cfg.json; returns the cfg dict."""
    directory = Path(directory)
    raw = read_sae_cfg(directory)
    weights = directory / SAE_WEIGHTS
    if not weights.is_file():
        raise damaged_sae(directory, f"{weights} is missing (its cfg.json is there)")
    expected = raw.get("weights_sha256")
    if not isinstance(expected, str):
        raise damaged_sae(directory, f"{directory / SAE_CFG} records no checksum of {weights.name} (written by an older tsae)")
    actual = sha256_file(weights)
    if actual != expected:
        raise damaged_sae(directory, f"corrupted SAE weights {weights}: sha256 {actual[:16]}... but cfg.json records "
                                  f"{expected[:16]}...")
    return raw
