"""Model-preservation metrics (SAEBench-core names and layout): the SAE spliced into a language model.

Each batch of tokens (B, T) goes through the model three times, identical except at the hook
(activation x_BT·, e.g. (B, T, D) for `blocks.1.hook_resid_post`):

    clean    x unchanged
    spliced  x̂ = reconstruct(x) at non-special positions, x at special positions
    ablated  0 at non-special positions,                  x at special positions

The ablation keeps x at special positions, like the splice, so that the spliced and ablated runs
differ from the clean one at exactly the positions the SAE is evaluated on (special tokens are never
evaluated: BOS carries an outlier activation an SAE is not trained on, and zeroing it would measure
the damage of breaking BOS, not how much the SAE loses). The scores below then compare like with like.

Counted positions: t < T − 1 with neither token t nor token t + 1 special (a BOS that starts a new
document is not something to predict). Over the N counted positions, with p the clean next-token
distribution and q the patched one, both from log-softmax in float32 (no NaN when probabilities
underflow), and sums accumulated in float64:

    CE(q)  = −(1/N) Σ log q_t(token_{t+1})                                     (nats)
    KL(q)  =  (1/N) Σ Σ_v p_t(v) (log p_t(v) − log q_t(v))                      (nats, per position ≥ 0)

    ce_loss_score    = (CE_abl − CE_sae) / (CE_abl − CE_clean)   1 = perfect, 0 = as bad as ablation
    kl_div_score     = (KL_abl − KL_sae) / KL_abl                1 = perfect, 0 = as bad as ablation
    ce_loss_increase =  CE_sae − CE_clean                        (nats)

A score whose denominator is exactly 0 is NaN. Per-position KL is clamped at 0: a float32 sum over
the vocabulary can come out a rounding error below it.

The same numbers in SAELens's convention (`sae_lens.evals`, 6.x: `get_recons_loss` with the special
tokens as `ignore_tokens`), in the section `saelens_convention`, so that a number quoted next to a
published one is comparable: the splice is the same; the ablation zeroes every position, special ones
included (a fourth forward pass); CE counts every position t < T − 1 whose input token t is not
special (a special target, e.g. the next document's BOS, counts); KL counts every position t < T
whose input token is not special (the last one included), unclamped. `total_tokens_ce` and
`total_tokens_kl` are the positions each counts; `total_tokens_eval_reconstruction`, every position of
the batches (what SAELens's `token_stats` reports under that name).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

_F64 = torch.float64
Reconstruct = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_BT·, special_BT) -> recon_BT·
_RUNS = ("clean", "sae", "abl")
_SAELENS_RUNS = ("clean", "sae", "abl_all")
SAELENS_SECTION = "saelens_convention"


def counted_positions(special_BT: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, T − 1) bool: True where token t and token t + 1 are both non-special."""
    return ~special_BT[:, :-1] & ~special_BT[:, 1:]


def _log_probs(logits_BTV: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits -> (B, T, V) float32 log-probabilities of the next token at every position."""
    return F.log_softmax(logits_BTV.float(), dim=-1)


def _ce_sum(logp_BSV: torch.Tensor, tokens_BT: torch.Tensor, counted_BS: torch.Tensor) -> torch.Tensor:
    """Σ over counted positions of −log p_t(token_{t+1}) (S = T − 1), float64."""
    target_BS1 = tokens_BT[:, 1:, None]
    nll_BS = -logp_BSV.gather(-1, target_BS1).squeeze(-1)
    return nll_BS[counted_BS].sum(dtype=_F64)


def _kl_sum(logp_BSV: torch.Tensor, logq_BSV: torch.Tensor, counted_BS: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Σ over counted positions of KL(p_t ‖ q_t), each clamped at 0 unless `clamp` is False, float64."""
    kl_BS = F.kl_div(logq_BSV, logp_BSV, log_target=True, reduction="none").sum(-1)[counted_BS]
    return (kl_BS.clamp_min(0) if clamp else kl_BS).sum(dtype=_F64)


def _score(worst: float, patched: float, best: float) -> float:
    """(worst − patched) / (worst − best); NaN when the denominator is exactly 0."""
    denom = worst - best
    return (worst - patched) / denom if denom != 0 else float("nan")


class ModelPreservation:
    """Streaming accumulator of CE loss and KL divergence with the SAE spliced in at `hook_name`.

    Usage: ``m = ModelPreservation(model, "blocks.1.hook_resid_post"); m.update(tokens_BT, special_BT,
    reconstruct); m.result()``. `model` is a transformer-lens `HookedTransformer` (anything with
    `parameters()`, `__call__(tokens) -> logits_BTV` and `run_with_hooks(tokens, fwd_hooks=[(name, fn)])`
    works); forward passes run without gradients in the model's own dtype. Accumulators are float64 on
    the model's device.
    """

    def __init__(self, model: Any, hook_name: str) -> None:
        self.model = model
        self.hook_name = hook_name
        self.n_tokens = 0
        self.n_batches = 0
        self._ce: dict[str, torch.Tensor] = {}
        self._kl: dict[str, torch.Tensor] = {}
        self._saelens = {"ce": {}, "kl": {}, "n_ce": 0, "n_kl": 0, "n_positions": 0}

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _run(self, tokens_BT: torch.Tensor, patch: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        """Logits (B, T, V) with the activation at the hook replaced by patch(x) (None: clean run)."""
        if patch is None:
            return self.model(tokens_BT)

        def hook_fn(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            return patch(act)

        return self.model.run_with_hooks(tokens_BT, fwd_hooks=[(self.hook_name, hook_fn)])

    @torch.no_grad()
    def update(self, tokens_BT: torch.Tensor, special_BT: torch.Tensor | None, reconstruct: Reconstruct) -> None:
        """Add one batch of token ids (B, T); `special_BT` True at special tokens (None: none are).

        `reconstruct(x_BT·, special_BT) -> recon_BT·` returns the SAE's reconstruction of the hook
        activation (same shape); its values at special positions are ignored.
        """
        if tokens_BT.ndim != 2:
            raise ValueError(f"tokens must be (B, T), got {tuple(tokens_BT.shape)}")
        device = self._device()
        tokens_BT = tokens_BT.to(device)
        special_BT = torch.zeros_like(tokens_BT, dtype=torch.bool) if special_BT is None else special_BT.to(device, torch.bool)
        if special_BT.shape != tokens_BT.shape:
            raise ValueError(f"special {tuple(special_BT.shape)} and tokens {tuple(tokens_BT.shape)} differ in shape")
        counted_BS = counted_positions(special_BT)
        n = int(counted_BS.sum())
        if n == 0:
            return

        def keep_special(x: torch.Tensor, replacement: torch.Tensor) -> torch.Tensor:
            if replacement.shape != x.shape:
                raise ValueError(f"reconstruction {tuple(replacement.shape)} does not match activation {tuple(x.shape)}")
            special_BTx = special_BT.view(*special_BT.shape, *([1] * (x.ndim - 2)))
            return torch.where(special_BTx, x, replacement.to(x.dtype))

        patches = {
            "clean": None,
            "sae": lambda x: keep_special(x, reconstruct(x, special_BT)),
            "abl": lambda x: keep_special(x, torch.zeros_like(x)),
            "abl_all": torch.zeros_like,  # SAELens's ablation: every position, special ones too
        }
        input_kept_BT = ~special_BT  # SAELens's positions: the input token is not special
        sl = self._saelens
        logp_BTV = _log_probs(self._run(tokens_BT, None))
        for run, patch in patches.items():
            logq_BTV = logp_BTV if patch is None else _log_probs(self._run(tokens_BT, patch))
            if run in _RUNS:
                self._add(self._ce, run, _ce_sum(logq_BTV[:, :-1], tokens_BT, counted_BS))
                if patch is not None:
                    self._add(self._kl, run, _kl_sum(logp_BTV[:, :-1], logq_BTV[:, :-1], counted_BS))
            if run in _SAELENS_RUNS:
                self._add(sl["ce"], run, _ce_sum(logq_BTV[:, :-1], tokens_BT, input_kept_BT[:, :-1]))
                if patch is not None:
                    self._add(sl["kl"], run, _kl_sum(logp_BTV, logq_BTV, input_kept_BT, clamp=False))
            del logq_BTV
        self.n_tokens += n
        self.n_batches += 1
        sl["n_ce"] += int(input_kept_BT[:, :-1].sum())
        sl["n_kl"] += int(input_kept_BT.sum())
        sl["n_positions"] += tokens_BT.numel()

    @staticmethod
    def _add(sums: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
        sums[name] = sums[name] + value if name in sums else value

    def result(self) -> dict[str, dict[str, Any]]:
        """The metrics as plain floats, in SAEBench-core sections (see the module docstring)."""
        if self.n_tokens == 0:
            raise ValueError("no counted positions evaluated yet")
        n = self.n_tokens
        ce = {run: float(self._ce[run]) / n for run in _RUNS}
        kl = {run: float(self._kl[run]) / n for run in ("sae", "abl")}
        return {
            "model_behavior_preservation": {
                "kl_div_score": _score(kl["abl"], kl["sae"], 0.0),
                "kl_div_with_ablation": kl["abl"],
                "kl_div_with_sae": kl["sae"],
            },
            "model_performance_preservation": {
                "ce_loss_score": _score(ce["abl"], ce["sae"], ce["clean"]),
                "ce_loss_with_ablation": ce["abl"],
                "ce_loss_with_sae": ce["sae"],
                "ce_loss_without_sae": ce["clean"],
                "ce_loss_increase": ce["sae"] - ce["clean"],
            },
            "model_token_stats": {"total_tokens_eval_model": n},
            SAELENS_SECTION: self._saelens_result(),
        }

    def _saelens_result(self) -> dict[str, Any]:
        """The CE and KL numbers in SAELens's convention (see the module docstring)."""
        sl = self._saelens
        ce = {run: float(sl["ce"][run]) / max(sl["n_ce"], 1) for run in _SAELENS_RUNS}
        kl = {run: float(sl["kl"][run]) / max(sl["n_kl"], 1) for run in ("sae", "abl_all")}
        return {
            "ce_loss_score": _score(ce["abl_all"], ce["sae"], ce["clean"]),
            "ce_loss_with_ablation": ce["abl_all"],
            "ce_loss_with_sae": ce["sae"],
            "ce_loss_without_sae": ce["clean"],
            "kl_div_score": _score(kl["abl_all"], kl["sae"], 0.0),
            "kl_div_with_ablation": kl["abl_all"],
            "kl_div_with_sae": kl["sae"],
            "total_tokens_ce": sl["n_ce"],
            "total_tokens_kl": sl["n_kl"],
            "total_tokens_eval_reconstruction": sl["n_positions"],
        }
