"""tsae_core: temporal sparse autoencoders on language-model activations.

Tensor names carry their shape as a suffix; the letters are:
    B batch (sequences)   T time (token positions)   D model dimension (d_in)
    F dictionary latents (d_sae)   G true (ground-truth) features   N flattened tokens

Public API::

    from tsae_core import load_sae, ActivationStore, load_config
    store = ActivationStore.open("runs/default/activations")
    sae = load_sae("runs/default/saes/topk")
    out = sae(x_BTD)          # out.features (B,T,F), out.recon (B,T,D)
"""

__version__ = "0.1.0"

import os  # noqa: E402

# PyTorch backs CPU tensors of 2 MB and more with transparent huge pages when this is set before its
# first allocation (pytorch/pytorch#115990). A training step allocates its large (tokens x latents)
# tensors afresh; with 4 kB pages their page faults were ~15% of a sparse step at 768 x 16384 on CPU.
# It takes effect where tsae_core is imported before torch (the `tsae` command, the notebooks' kernels,
# which inherit it); THP_MEM_ALLOC_ENABLE=0 in the environment keeps 4 kB pages.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from tsae_core.config import ConfigError, ExperimentConfig, load_config  # noqa: E402

__all__ = ["__version__", "ConfigError", "ExperimentConfig", "load_config", "load_sae", "ActivationStore"]


def __getattr__(name: str):
    # Lazy imports keep `import tsae_core` light for the runner's validation step.
    if name == "load_sae":
        from tsae_core.sae import load_sae

        return load_sae
    if name == "ActivationStore":
        from tsae_core.store import ActivationStore

        return ActivationStore
    raise AttributeError(name)
