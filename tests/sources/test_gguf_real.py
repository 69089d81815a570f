"""The real packaged models (Gemma 3 270M, SmolLM2-135M), where their packages are installed (`make models`).

The stored activations of a harvest through `params/<model>.yaml` must equal an independent
`transformers` forward pass of the same GGUF file at the hooked layer (relative error ≤ 1e-3 at
every non-special position), and the model must be a real language model on the harvested text.
Skipped when the packages are absent, as in the fast set-up of `make test`.
"""

from __future__ import annotations

import importlib.metadata as metadata

import pytest
import torch

from tests.conftest import ci_config
from tsae_core.config import load_config

pytestmark = pytest.mark.slow(minutes=4)  # its cost on 2 cores: the costliest files start first


def _installed(packages: list[str]) -> bool:
    try:
        for p in packages:
            metadata.distribution(p)
        return True
    except metadata.PackageNotFoundError:
        return False


def _harvest_params(params: str, tmp_path):
    """The model's params with a handful of contexts, harvested into tmp_path."""
    from tsae_core.harvest import harvest
    from tsae_core.store import ActivationStore

    real = load_config(params)
    if not _installed(real.source.gguf.packages):
        pytest.skip(f"{' '.join(real.source.gguf.packages)} not installed (make models)")
    cfg = ci_config(tmp_path, **{
        "source": real.to_dict()["source"], "harvest.context_size": 128, "harvest.n_train_sequences": 4,
        "harvest.n_eval_sequences": 4, "harvest.sequences_per_shard": 4,
    })
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    return cfg, ActivationStore.open(cfg.run_dir / "activations")


def _transformers_forward(cfg, tokens_BT: torch.Tensor):
    """Hidden states and logits of the GGUF file read by transformers alone (no transformer-lens)."""
    from transformers import AutoModelForCausalLM

    from tsae_core.sources.gguf_file import packaged_model_file

    g = cfg.source.gguf
    path = packaged_model_file(g.packages, g.file, g.sha256)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(tokens_BT, output_hidden_states=True)


@pytest.mark.parametrize("params,wrapper", [("params/gemma-3-270m.yaml", "HookedTransformer"),
                                            ("params/smollm2-135m.yaml", "TransformerBridge")])
def test_stored_activations_equal_an_independent_transformers_forward(params, wrapper, tmp_path):
    from tsae_core.sources.lm import hook_layer

    cfg, store = _harvest_params(params, tmp_path)
    assert store.manifest["source"]["wrapper"] == wrapper
    batch = next(store.split("eval").batches(4, shuffle=False))
    out = _transformers_forward(cfg, batch.tokens_BT)
    reference_BTD = out.hidden_states[hook_layer(cfg.source.hook_name) + 1]  # hidden_states[0] is the embedding
    keep_BT = ~batch.special_BT
    rel_N = (batch.acts_BTD - reference_BTD).norm(dim=-1)[keep_BT] / reference_BTD.norm(dim=-1)[keep_BT]
    assert rel_N.max() <= 1e-3, f"max relative error {rel_N.max():.2e}"

    # a real language model on this text: well below a uniform guess over its vocabulary
    logp_BSV = torch.log_softmax(out.logits[:, :-1], dim=-1)
    nll_BS = -logp_BSV.gather(-1, batch.tokens_BT[:, 1:, None]).squeeze(-1)
    counted_BS = keep_BT[:, :-1] & keep_BT[:, 1:]
    assert float(nll_BS[counted_BS].mean()) < 4.5
