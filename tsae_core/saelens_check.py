"""What a SAELens SAE must be for tsae and SAELens to compute the same codes from it: one check that
import (`load_from`, `saelens_import.load_saelens_sae`) and export (`interop.export_saelens`) share.

- Every weight is finite: a NaN or Inf weight makes codes NaN, and the failure would surface far away
  (in scikit-learn, during evaluation) without naming the file.
- TopK: `k` is a whole number from 1 to d_sae. With k = 0 tsae would still keep one latent (L0 1, a
  "healthy" SAE that SAELens cannot run); above d_sae or below 1 there is no top k to take.
- JumpReLU: no threshold is negative. SAELens computes relu(pre) 1[pre > theta], tsae pre 1[pre > theta]:
  they differ exactly where theta < pre < 0, so with a negative threshold the imported SAE would be
  another SAE than the one in the folder (and an export would write one SAELens reads differently).
  SAELens's codes are the same with such a threshold set to 0, which the message advises.

`saelens_problems` lists what is wrong, each with the file it is in (`cfg.json` or the weights) and
the key or tensor, so that the message can name both.
"""

from __future__ import annotations

from typing import Any

import torch

SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_CFG = "cfg.json"
ACTIVATION_TO_SAELENS = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
SAELENS_TO_ACTIVATION = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}


class NotRepresentable(ValueError):
    """An SAE that the other library's format cannot express; the message says why."""


def nonfinite_problems(tensors: dict[str, torch.Tensor]) -> list[str]:
    """One line per tensor holding NaN or Inf values, naming the tensor and how many."""
    out = []
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = t[~torch.isfinite(t)]
            out.append(f"tensor {name} holds non-finite values ({bad.numel()} of {t.numel()}: {int(bad.isnan().sum())} NaN, "
                       f"{int(bad.isinf().sum())} Inf)")
    return out


def _k_problem(k: Any, d_sae: int) -> str | None:
    whole = isinstance(k, int) and not isinstance(k, bool) or isinstance(k, float) and k.is_integer()
    if k is None:
        return "has no key k, which a TopK SAE needs"
    if not whole or not 1 <= k <= d_sae:
        return (f"key k is {k!r}: a TopK SAE keeps the k largest of its d_sae = {d_sae} latents, so k must be a whole "
                f"number from 1 to {d_sae}")
    return None


def saelens_problems(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], exporting: bool = False) -> list[tuple[str, str]]:
    """[(file, problem)] of a SAELens SAE given by its `cfg.json` values and its weight tensors (as
    stored, before any folding); empty when tsae and SAELens compute the same codes from it.
    `exporting`: the tensors are a tsae SAE's, about to be written (the advice differs)."""
    problems = [(SAELENS_WEIGHTS, f"{p}: every code would be NaN; use weights from before the training diverged")
                for p in nonfinite_problems(tensors)]
    architecture = cfg.get("architecture", "standard")
    if architecture == "topk" and (p := _k_problem(cfg.get("k"), int(cfg["d_sae"]))):
        problems.append((SAELENS_CFG, p))
    threshold = tensors.get("threshold")
    if architecture == "jumprelu" and threshold is not None and bool((threshold < 0).any()):
        problems.append((SAELENS_WEIGHTS, f"tensor threshold has {int((threshold < 0).sum())} negative values (the smallest "
                                          f"{float(threshold.min()):.4g}): SAELens's JumpReLU zeroes negative "
                                          "pre-activations and tsae's keeps them, so the two would compute different codes; "
                                          + ("SAELens cannot express this SAE" if exporting else
                                             "SAELens computes the same codes with those thresholds set to 0, so save the "
                                             "SAE with threshold.clamp(min=0) to import it")))
    return problems
