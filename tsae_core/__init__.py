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

from tsae_core.config import ConfigError, ExperimentConfig, load_config
from tsae_core.version import __version__

__all__ = ["__version__", "ConfigError", "ExperimentConfig", "load_config", "load_sae", "ActivationStore"]


def __getattr__(name: str):
    # Lazy imports keep `import tsae_core` light for the runner's validation step.
    if name == "load_sae":
        from tsae_core.loading import load_sae

        return load_sae
    if name == "ActivationStore":
        from tsae_core.store import ActivationStore

        return ActivationStore
    raise AttributeError(name)
