"""The unlearning eval's sets, shared by every SAE of a run: forget and retain contexts split into
selection and test halves, with their clean losses (language models) or true features (synthetic)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F_nn

from tsae_core.config import ExperimentConfig
from tsae_core.evals.unlearning.config import UnlearningConfig
from tsae_core.metrics.model import counted_positions
from tsae_core.progress import tqdm
from tsae_core.sources.corpus import _unit_hash, corpus_fingerprint, python_docs_documents

LANGUAGE_MODEL, SYNTHETIC = "language_model", "synthetic"


@dataclass
class Contexts:
    """Contexts (N, T) with the activation at the hook (raw units) and their token masks."""

    acts_NTD: torch.Tensor
    doc_start_NT: torch.Tensor
    position_NT: torch.Tensor
    special_NT: torch.Tensor
    forget_NT: torch.Tensor
    """True at the non-special tokens of the forget set."""
    retain_NT: torch.Tensor
    """True at the non-special tokens of the retain set."""
    tokens_NT: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.acts_NTD.shape[0]


@dataclass
class UnlearningData:
    """Everything the eval of one SAE needs that does not depend on the SAE: built once per run
    (`build_unlearning_data`) and shared by all its SAEs."""

    kind: str
    settings: UnlearningConfig
    select: Contexts
    test: Contexts
    info: dict[str, Any]
    """Counts, packages, fingerprints and clean values, recorded in every JSON's `eval_config`."""
    clean: dict[str, float]
    """Language model: clean CE {"forget", "retain"} on the test half; synthetic: zeros."""
    measure: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = None
    """(delta_NTD raw-unit edit of the test contexts, changed_N rows with a non-zero edit) ->
    {"forget": CE or damage, "retain": CE or damage}."""
    batch_size: int = 64


def _split_halves(texts: Sequence[str], seed: int, limit: int) -> tuple[list[str], list[str]]:
    """(selection, test): a text is in the selection half iff its hash < 0.5; each half in the order
    of a second hash of the text, its first `limit` texts."""
    sel = [t for t in texts if _unit_hash(t, seed) < 0.5]
    test = [t for t in texts if _unit_hash(t, seed) >= 0.5]
    order = lambda t: _unit_hash("order\x00" + t, seed)  # noqa: E731
    return sorted(sel, key=order)[:limit], sorted(test, key=order)[:limit]


def forget_retain_texts(settings: UnlearningConfig) -> dict[str, Any]:
    """The forget and retain docstrings of the corpus, each split into selection and test halves.

    Returns {"forget_select", "forget_test", "retain_select", "retain_test": [texts], "packages":
    {package: forget docstrings found}}. `ValueError` naming the key when a forget half has fewer
    than `min_contexts` texts."""
    docs = [d for d in python_docs_documents() if d.kind == "docstring"]
    wanted = set(settings.forget_packages)
    forget = [d.text for d in docs if d.package in wanted]
    retain = [d.text for d in docs if d.package not in wanted]
    packages = {p: sum(d.package == p for d in docs) for p in settings.forget_packages}
    out: dict[str, Any] = {"packages": packages}
    for name, texts in (("forget", forget), ("retain", retain)):
        out[f"{name}_select"], out[f"{name}_test"] = _split_halves(texts, settings.split_seed, settings.max_contexts)
        for half in ("select", "test"):
            if len(out[f"{name}_{half}"]) < settings.min_contexts:
                raise ValueError(
                    f"unlearning: the {name} set has {len(out[f'{name}_{half}'])} docstrings in its {half} half, fewer "
                    f"than unlearning.min_contexts ({settings.min_contexts}); forget_packages {sorted(wanted)} have "
                    f"{len(forget)} docstrings in this Python's stdlib ({packages}): name more or larger packages "
                    "(e.g. email, xml, http, asyncio, logging) or lower min_contexts")
    return out


def _lm_runner(model: Any, hook_name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """(tokens_BT, x_BTD cached at the hook, delta_BTD) -> logits: the model with x + delta at the hook.

    A transformer-lens `HookedTransformer` hooked at `blocks.L.hook_resid_post` restarts from the
    cached residual (`start_at_layer=L + 1`): the blocks before the hook are not run again. Otherwise the
    whole model runs with a hook that adds delta to the activation (`run_with_hooks`)."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook_name)
    restart = None
    try:
        from transformer_lens import HookedTransformer

        if match and isinstance(model, HookedTransformer) and model.cfg.positional_embedding_type != "shortformer":
            restart = int(match.group(1)) + 1
    except ImportError:  # pragma: no cover - transformer-lens is a dependency
        pass
    device = next(model.parameters()).device
    dtype = getattr(getattr(model, "cfg", None), "dtype", torch.float32)

    @torch.no_grad()
    def run(tokens_BT: torch.Tensor, x_BTD: torch.Tensor, delta_BTD: torch.Tensor) -> torch.Tensor:
        if restart is not None:
            return model((x_BTD + delta_BTD).to(device, dtype), start_at_layer=restart)
        d = delta_BTD.to(device)

        def add(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            return act + d.to(act.dtype)

        return model.run_with_hooks(tokens_BT.to(device), fwd_hooks=[(hook_name, add)])

    return run


def _nll_rows(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor, special_BT: torch.Tensor) -> torch.Tensor:
    """(B,) float64: Σ over counted positions (input and target non-special) of −log p(next token)."""
    logp = F_nn.log_softmax(logits_BTV[:, :-1].float(), dim=-1)
    tokens_BT, special_BT = tokens_BT.to(logp.device), special_BT.to(logp.device)
    nll_BS = -logp.gather(-1, tokens_BT[:, 1:, None]).squeeze(-1)
    return (nll_BS.double() * counted_positions(special_BT)).sum(-1).cpu()


def _lm_measure(model: Any, hook_name: str, test: Contexts, forget_rows_N: torch.Tensor, batch_size: int):
    """The clean CE per set and the `measure` function of a language model (see the module docstring)."""
    run = _lm_runner(model, hook_name)
    tokens = test.tokens_NT
    counted_N = counted_positions(test.special_NT).sum(-1).double()

    def nll(rows: torch.Tensor, delta_NTD: torch.Tensor | None) -> torch.Tensor:
        out = torch.zeros(len(rows), dtype=torch.float64)
        for a in range(0, len(rows), batch_size):
            r = rows[a:a + batch_size]
            x = test.acts_NTD[r]
            d = torch.zeros_like(x) if delta_NTD is None else delta_NTD[r]
            out[a:a + batch_size] = _nll_rows(run(tokens[r], x, d), tokens[r], test.special_NT[r])
        return out

    clean_nll_N = nll(torch.arange(test.n), None)

    def ce(nll_N: torch.Tensor) -> dict[str, float]:
        return {name: float(nll_N[rows].sum() / counted_N[rows].sum())
                for name, rows in (("forget", forget_rows_N), ("retain", ~forget_rows_N))}

    def measure(delta_NTD: torch.Tensor, changed_N: torch.Tensor) -> dict[str, float]:
        nll_N = clean_nll_N.clone()
        rows = changed_N.nonzero().squeeze(-1)
        if len(rows):
            nll_N[rows] = nll(rows, delta_NTD)
        return ce(nll_N)

    return ce(clean_nll_N), measure


def _lm_data(cfg: ExperimentConfig, model: Any, progress: bool) -> UnlearningData:
    from tsae_core.sources.factory import load_model, load_tokenizer
    from tsae_core.sources.lm import hook_layer
    from tsae_core.sources.text_contexts import hook_activations, text_contexts

    u, T, hook = cfg.unlearning, cfg.harvest.context_size, cfg.source.hook_name
    texts = forget_retain_texts(u)
    model = load_model(cfg) if model is None else model
    tokenizer = load_tokenizer(cfg)
    bs = cfg.source.model_batch_size

    def contexts(forget: list[str], retain: list[str]) -> tuple[Contexts, torch.Tensor]:
        c = text_contexts(tokenizer, forget + retain, T)
        acts = torch.cat([hook_activations(model, hook, c["tokens_NT"][a:a + bs], stop_at_layer=hook_layer(hook) + 1)
                          for a in tqdm(range(0, len(forget) + len(retain), bs), desc="unlearning: activations",
                                        disable=not progress)])
        forget_rows = torch.arange(len(forget) + len(retain)) < len(forget)
        kept = ~c["special_NT"]
        return Contexts(acts, c["doc_start_NT"], c["position_NT"], c["special_NT"], kept & forget_rows[:, None],
                        kept & ~forget_rows[:, None], c["tokens_NT"]), forget_rows

    select, _ = contexts(texts["forget_select"], texts["retain_select"])
    test, forget_rows = contexts(texts["forget_test"], texts["retain_test"])
    clean, measure = _lm_measure(model, hook, test, forget_rows, bs)
    info = {
        "source": LANGUAGE_MODEL, "hook_name": hook, "context_size": T,
        "forget_packages_docstrings": texts["packages"],
        "forget_packages_without_docstrings": sorted(p for p, n in texts["packages"].items() if n == 0),
        "retain_set": "every other stdlib docstring of the corpus (pydoc topics in neither set)",
        "n_contexts": {k: len(texts[k]) for k in ("forget_select", "forget_test", "retain_select", "retain_test")},
        "n_tokens": _token_counts(select, test),
        "n_ce_positions": {"forget_test": int(counted_positions(test.special_NT)[forget_rows].sum()),
                           "retain_test": int(counted_positions(test.special_NT)[~forget_rows].sum())},
        "fingerprints": {k: corpus_fingerprint(texts[k]) for k in ("forget_select", "forget_test", "retain_select", "retain_test")},
        "clean_forget_ce": clean["forget"], "clean_retain_ce": clean["retain"],
    }
    return UnlearningData(LANGUAGE_MODEL, u, select, test, info, clean, measure, bs)


def _token_counts(select: Contexts, test: Contexts) -> dict[str, int]:
    return {"forget_select": int(select.forget_NT.sum()), "retain_select": int(select.retain_NT.sum()),
            "forget_test": int(test.forget_NT.sum()), "retain_test": int(test.retain_NT.sum())}


def synthetic_forget_features(ground_truth: Any, n: int) -> list[int]:
    """The `n` slow true features with the highest firing rates (ties: lower index), as feature indices."""
    slow = ground_truth.kind_mask("slow").nonzero().squeeze(-1).tolist()
    if n > len(slow):
        raise ValueError(f"unlearning.synthetic_forget_features is {n} but the synthetic source has {len(slow)} slow "
                         f"features; set it to at most {len(slow)}")
    rates = ground_truth.rates_G
    return sorted(sorted(slow, key=lambda g: (-float(rates[g]), g))[:n])


def _synthetic_data(cfg: ExperimentConfig) -> UnlearningData:
    from tsae_core.sources.factory import make_source

    u = cfg.unlearning
    source = make_source(cfg, progress=False)
    forget_G = torch.tensor(synthetic_forget_features(source.ground_truth, u.synthetic_forget_features))
    directions_FD = source.ground_truth.directions_GD[forget_G].float()

    def contexts(split: str) -> tuple[Contexts, torch.Tensor]:
        b = source.sequences(split, 0, u.max_contexts, with_true_codes=True)
        codes_NTF = b.true_codes_BTG[..., forget_G].float()
        kept = ~b.special_BT
        on = (codes_NTF > 0).any(-1) & kept
        return Contexts(b.acts_BTD.float(), b.doc_start_BT, b.position_BT, b.special_BT, on, kept & ~on), codes_NTF

    select, _ = contexts("unlearning-select")
    test, codes_NTF = contexts("unlearning-test")
    for c, half in ((select, "select"), (test, "test")):
        if int(c.forget_NT.sum()) < u.min_contexts or int(c.retain_NT.sum()) < u.min_contexts:
            raise ValueError(f"unlearning: the synthetic {half} data has {int(c.forget_NT.sum())} forget and "
                             f"{int(c.retain_NT.sum())} retain tokens; raise unlearning.max_contexts or change "
                             "synthetic_forget_features")
    x_retain = test.acts_NTD[test.retain_NT].double()
    retain_variance = float((x_retain - x_retain.mean(0)).pow(2).sum())
    signal = float(codes_NTF.double().sum())
    on_NTF = (codes_NTF > 0) & test.forget_NT[..., None]

    def measure(delta_NTD: torch.Tensor, changed_N: torch.Tensor) -> dict[str, float]:
        proj_NTF = delta_NTD.double() @ directions_FD.double().T  # <x' - x, d_g>
        removed = float(-(proj_NTF * on_NTF).sum())
        energy = float(delta_NTD.double()[test.retain_NT].pow(2).sum())
        return {"forget": removed / signal, "retain": energy / retain_variance}

    info = {
        "source": SYNTHETIC, "splits": ["unlearning-select", "unlearning-test"], "n_sequences": u.max_contexts,
        "context_size": cfg.harvest.context_size, "forget_features": forget_G.tolist(),
        "forget_feature_rates": [float(source.ground_truth.rates_G[g]) for g in forget_G],
        "n_tokens": _token_counts(select, test), "forget_signal": signal, "retain_variance": retain_variance,
    }
    return UnlearningData(SYNTHETIC, u, select, test, info, {"forget": 0.0, "retain": 0.0}, measure,
                          cfg.eval.batch_sequences)


def build_unlearning_data(cfg: ExperimentConfig, model: Any = None, progress: bool = True) -> UnlearningData:
    """The forget/retain contexts (selection and test halves), their activations and the clean
    measurements, for `cfg`'s source: built once per run, shared by every SAE. Language models: the
    model is loaded unless given."""
    if cfg.source.kind == "synthetic":
        return _synthetic_data(cfg)
    return _lm_data(cfg, model, progress)
