"""The `cluster:` section of a params file: how learned features are grouped (`tsae_core.evals.cluster.run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tsae_core.typed import check as _check


@dataclass(frozen=True)
class ClusterConfig:
    method: Literal["kmeans", "agglomerative", "gmm"] = "kmeans"
    """How latents are grouped: k-means, Ward agglomerative (memory quadratic in alive latents) or a
    Gaussian mixture with diagonal covariances."""
    n_clusters: int | list[int] = field(default_factory=lambda: list(range(2, 11)))
    """Clusters of learned features: a number, or a list of candidates of which the one with the
    highest silhouette score is kept."""
    max_lag: int = 16
    """Autocorrelation lags used as temporal descriptors of a feature."""
    max_sequences: int = 256
    """Eval sequences used to describe features."""
    coactivation_dims: int = 8
    """Dimensions of the co-activation descriptor (truncated SVD of which latents fire on the same
    tokens); 0 leaves co-activation out."""
    example_latents: int = 2
    """Language-model sources: latents per cluster shown with their top-activating contexts."""
    example_contexts: int = 3
    """Top-activating contexts kept per latent (at most one per sequence)."""
    context_before: int = 16
    """Tokens shown before the activating token (within its document)."""
    context_after: int = 4
    """Tokens shown after the activating token (within its document)."""

    def __post_init__(self) -> None:
        candidates = self.candidate_counts()
        _check(len(candidates) > 0, "cluster.n_clusters", "give a number of clusters or a list of candidates")
        _check(all(k >= 2 for k in candidates), "cluster.n_clusters", f"every count must be >= 2, got {self.n_clusters}")
        _check(len(set(candidates)) == len(candidates), "cluster.n_clusters", f"must not repeat a count, got {self.n_clusters}")
        _check(self.max_lag >= 1, "cluster.max_lag", "must be >= 1")
        _check(self.max_sequences > 0, "cluster.max_sequences", "must be > 0")
        _check(self.coactivation_dims >= 0, "cluster.coactivation_dims", "must be >= 0 (0: no co-activation descriptor)")
        for name in ("example_latents", "example_contexts", "context_before", "context_after"):
            _check(getattr(self, name) >= 0, f"cluster.{name}", "must be >= 0")

    def candidate_counts(self) -> list[int]:
        """The numbers of clusters to try, in the order given."""
        return [self.n_clusters] if isinstance(self.n_clusters, int) else list(self.n_clusters)
