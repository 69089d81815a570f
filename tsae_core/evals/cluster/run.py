"""Cluster learned features by how they fire, describe each cluster, and compare with true kinds.

`cluster_run_variant` does the whole stage for one trained SAE (notebook 04); the pieces below it
are plain functions on arrays.

Each alive latent is described by one row of
    [ log10 firing rate | autocorrelation at lags 1..K | ln(run length / i.i.d. run length)
      | position profile (P bins) | co-activation embedding (C dims, `tsae_core.evals.coactivation`) ]
The first four blocks are standardised per column (StandardScaler) and divided by sqrt(their width),
so each has total variance 1: the K autocorrelation columns weigh as much as the one firing-rate
column. The co-activation block keeps its own scale: a latent's squared row norm is the share of its
firing variance that the C shared components explain (≤ 1), so the block weighs at most as much as
another block, and only as much as the latents really fire together.

`cluster.method` (k-means, Ward agglomerative or a diagonal Gaussian mixture) groups the rows; with
a list of candidate counts, the count with the highest silhouette score (Euclidean, on these rows)
is kept. Clusters are numbered by size, largest first. PCA gives a 2-D picture. With a synthetic
source, each latent that matches a true feature (decoder cosine ≥ threshold) carries that feature's
kind, and the clusters are scored against those kinds (contingency table, adjusted Rand index,
normalised mutual information, purity). With a language model, a few latents per cluster come with
their top-activating contexts (`tsae_core.top_contexts`).
Each cluster's decoder subspace is described by the condition number of its unit decoder rows
(`tsae_core.metrics.geometry`): latents that fire alike and write along nearly the same directions
give a large one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from tsae_core.evals.coactivation import CoFiring, coactivation_embedding
from tsae_core.metrics.geometry import group_condition_numbers
from tsae_core.metrics.ground_truth import cosine_matrix
from tsae_core.metrics.temporal import TemporalMetrics
from tsae_core.progress import tqdm
from tsae_core.top_contexts import TopContexts

UNMATCHED = "unmatched"
POSITION_BINS = 8
"""Bins of position-within-document in the position profile (over 0..context size)."""
SILHOUETTE_SAMPLE = 4000
"""Latents the silhouette score is computed on (a fixed random subset beyond this; its cost is quadratic)."""


class PositionProfile:
    """Streaming mean activation of each latent per bin of position-within-document.

    bin(p) = min(p · n_bins // max_position, n_bins − 1). `result()` divides each bin's activation
    mass by the number of evaluated tokens in that bin (so short documents do not make every latent
    look 'early'), then normalises each latent's row to sum to 1 (rows of never-active latents are 0).
    """

    def __init__(self, n_latents: int, n_bins: int = 8, max_position: int = 128) -> None:
        if n_bins < 1 or max_position < 1:
            raise ValueError("n_bins and max_position must be >= 1")
        self.n_bins, self.max_position = n_bins, max_position
        self.mass_FP = torch.zeros(n_latents, n_bins, dtype=torch.float64)
        self.tokens_P = torch.zeros(n_bins, dtype=torch.float64)

    @torch.no_grad()
    def update(self, features_BTF: torch.Tensor, position_BT: torch.Tensor, mask_BT: torch.Tensor | None = None) -> None:
        keep_N = torch.ones(position_BT.numel(), dtype=torch.bool) if mask_BT is None else mask_BT.reshape(-1).bool().cpu()
        bins_N = (position_BT.reshape(-1).cpu().long() * self.n_bins // self.max_position).clamp(0, self.n_bins - 1)[keep_N]
        f_NF = features_BTF.reshape(-1, features_BTF.shape[-1]).cpu()[keep_N].to(torch.float64)
        onehot_NP = torch.nn.functional.one_hot(bins_N, self.n_bins).to(torch.float64)
        self.mass_FP += f_NF.abs().T @ onehot_NP
        self.tokens_P += onehot_NP.sum(0)

    def result(self) -> np.ndarray:
        """(F, P) float64 rows summing to 1 (or 0 for latents that never fired)."""
        mean_FP = self.mass_FP / self.tokens_P.clamp_min(1)
        total_F1 = mean_FP.sum(1, keepdim=True)
        return torch.where(total_F1 > 0, mean_FP / total_F1.clamp_min(1e-300), 0.0).numpy()


def position_profile(
    features_BTF: torch.Tensor,
    position_BT: torch.Tensor,
    mask_BT: torch.Tensor | None = None,
    n_bins: int = 8,
    max_position: int = 128,
) -> np.ndarray:
    """One-shot `PositionProfile`: (F, n_bins) normalised mean activation per position bin."""
    prof = PositionProfile(features_BTF.shape[-1], n_bins, max_position)
    prof.update(features_BTF, position_BT, mask_BT)
    return prof.result()


def feature_descriptors(
    temporal_per_latent: Mapping[str, Any],
    frequencies_F: Sequence[float] | np.ndarray | torch.Tensor,
    position_profile_FP: np.ndarray,
    max_lag: int | None = None,
    coactivation_FC: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Descriptor rows of the alive latents: (X_AP, alive_idx); see the module docstring for the blocks' weights.

    `temporal_per_latent` is `TemporalMetrics.result()["per_latent"]` (uses `alive_F`,
    `autocorr_lag_FK`, `run_length_ratio_F`); `max_lag` keeps the first lags only (None: all);
    `coactivation_FC` (from `coactivation_embedding`) adds the co-activation block.
    Undefined autocorrelations (a latent constant on its pairs) count as 0.
    """
    freq_F = np.asarray(frequencies_F, dtype=np.float64)
    alive_F = np.asarray(temporal_per_latent.get("alive_F", freq_F > 0), dtype=bool) & (freq_F > 0)
    alive_idx = np.flatnonzero(alive_F)
    autocorr_AK = np.asarray(temporal_per_latent["autocorr_lag_FK"], dtype=np.float64)[alive_idx][:, :max_lag]
    ratio_A = np.asarray(temporal_per_latent["run_length_ratio_F"], dtype=np.float64)[alive_idx]
    blocks = [
        np.log10(freq_F[alive_idx])[:, None],
        np.nan_to_num(autocorr_AK, nan=0.0),
        np.log(np.clip(np.nan_to_num(ratio_A, nan=1.0), 1e-6, None))[:, None],
        np.asarray(position_profile_FP, dtype=np.float64)[alive_idx],
    ]
    coact_AC = np.zeros((len(alive_idx), 0)) if coactivation_FC is None else np.asarray(coactivation_FC, np.float64)[alive_idx]
    if len(alive_idx) == 0:
        return np.zeros((0, sum(b.shape[1] for b in blocks) + coact_AC.shape[1])), alive_idx
    scaled = StandardScaler().fit_transform(np.concatenate(blocks, 1))
    widths = np.concatenate([np.full(b.shape[1], b.shape[1], dtype=np.float64) for b in blocks])
    return np.concatenate([scaled / np.sqrt(widths), coact_AC], 1), alive_idx


def fit_clusters(X: np.ndarray, n_clusters: int, method: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Labels (A,) of descriptor rows by `method` (kmeans | agglomerative | gmm), numbered by cluster
    size, largest first; fewer clusters than asked when there are fewer rows."""
    if method not in ("kmeans", "agglomerative", "gmm"):
        raise ValueError(f"unknown clustering method {method!r}; use kmeans, agglomerative or gmm")
    k = min(n_clusters, len(X))
    if k <= 1:
        return np.zeros(len(X), dtype=np.int64)
    if method == "kmeans":
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(X)
    elif method == "agglomerative":
        labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(X)
    else:
        labels = GaussianMixture(k, covariance_type="diag", n_init=3, reg_covar=1e-4, random_state=seed).fit(X).predict(X)
    return by_size(labels)


def by_size(labels: np.ndarray) -> np.ndarray:
    """The same partition with clusters renumbered 0, 1, ... from largest to smallest (ties: first seen)."""
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    new = np.empty(len(values), dtype=np.int64)
    new[np.lexsort((first, -counts))] = np.arange(len(values))
    return new[np.searchsorted(values, labels)]


def silhouette(X: np.ndarray, labels: np.ndarray, seed: int = 0) -> float | None:
    """Mean silhouette coefficient (Euclidean) of the partition, on at most `SILHOUETTE_SAMPLE` rows;
    None where it is undefined (fewer than 2 clusters, or every row its own cluster)."""
    if not 2 <= len(set(labels.tolist())) <= len(X) - 1:
        return None
    sample = SILHOUETTE_SAMPLE if len(X) > SILHOUETTE_SAMPLE else None
    return float(silhouette_score(X, labels, sample_size=sample, random_state=seed))


def select_clusters(
    X: np.ndarray, candidates: Sequence[int], method: str = "kmeans", seed: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster with each candidate count and keep the one with the highest silhouette score.

    Returns (labels, selection), selection = {"method", "candidates", "silhouette" (per candidate;
    None where undefined, e.g. a count not below the number of rows), "chosen"}. Ties go to the
    smaller count; with no defined score, the smallest candidate is kept."""
    fits = {k: fit_clusters(X, k, method, seed) for k in candidates if k < len(X)}
    scores = [silhouette(X, fits[k], seed) if k in fits else None for k in candidates]
    scored = [(s, -k) for k, s in zip(candidates, scores) if s is not None]
    chosen = -max(scored)[1] if scored else min(candidates)
    labels = fits[chosen] if chosen in fits else fit_clusters(X, chosen, method, seed)
    return labels, {"method": method, "candidates": list(candidates), "silhouette": scores, "chosen": int(chosen)}


def embed_2d(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """(A, 2) PCA coordinates for plotting (zero-padded when X has fewer than 2 usable dimensions)."""
    out = np.zeros((len(X), 2))
    n_comp = min(2, X.shape[0] - 1, X.shape[1]) if X.ndim == 2 else 0  # PCA needs >= 2 rows
    if n_comp > 0:
        out[:, :n_comp] = PCA(n_components=n_comp, random_state=seed).fit_transform(X)
    return out


def latent_kinds(W_dec_FD: torch.Tensor, directions_GD: torch.Tensor, kinds: Sequence[str], threshold: float = 0.9) -> list[str]:
    """Kind of the true feature nearest to each latent's decoder row, or 'unmatched' below `threshold`."""
    best_cos_F, best_g_F = cosine_matrix(W_dec_FD, directions_GD).max(dim=0)
    return [kinds[g] if c >= threshold else UNMATCHED for c, g in zip(best_cos_F.tolist(), best_g_F.tolist())]


def compare_with_truth(labels: Sequence[int] | np.ndarray, latent_kind: Sequence[str]) -> dict[str, Any]:
    """Clusters against true kinds, over the latents that match a true feature.

    labels[i] is the cluster of latent i and latent_kind[i] its kind (or 'unmatched'), for the same
    latents. Returns the contingency table {"clusters", "kinds", "counts" (cluster × kind)}, ARI and
    NMI (NaN with < 2 matched latents), each cluster's purity (share of its matched latents in its
    commonest kind; NaN if it has none) and the overall purity (matched-weighted).
    """
    labels = np.asarray(labels, dtype=np.int64)
    kinds = np.asarray(list(latent_kind), dtype=object)
    if len(labels) != len(kinds):
        raise ValueError(f"{len(labels)} labels but {len(kinds)} kinds")
    matched = kinds != UNMATCHED
    clusters = sorted(set(labels.tolist()))
    kind_names = sorted(set(kinds[matched].tolist()))
    table = np.array([[np.sum((labels == c) & (kinds == k)) for k in kind_names] for c in clusters], dtype=np.int64)
    table = table.reshape(len(clusters), len(kind_names))
    n_matched = int(matched.sum())
    enough = n_matched >= 2
    nan = float("nan")
    return {
        "contingency": {"clusters": clusters, "kinds": kind_names, "counts": table.tolist()},
        "unmatched_per_cluster": [int(np.sum((labels == c) & ~matched)) for c in clusters],
        "n_matched": n_matched,
        "n_unmatched": int(len(labels) - n_matched),
        "adjusted_rand_index": float(adjusted_rand_score(kinds[matched], labels[matched])) if enough else nan,
        "normalized_mutual_information": float(normalized_mutual_info_score(kinds[matched], labels[matched])) if enough else nan,
        "purity_per_cluster": [float(row.max() / row.sum()) if row.sum() > 0 else nan for row in table],
        "purity": float(table.max(1).sum() / n_matched) if n_matched and table.size else nan,
    }


def cluster_profile(labels_A: np.ndarray, per_latent: dict[str, Any], alive_idx: np.ndarray,
                    position_profile_FP: np.ndarray) -> dict[str, list]:
    """What each cluster's latents are like, in raw units: size, mean firing rate, mean lag-1
    autocorrelation, mean run length relative to an i.i.d. latent of the same rate (None where no
    latent of the cluster has one), and the mean position profile (share of activation per bin)."""
    rate_A = np.asarray(per_latent["frequency_F"], dtype=np.float64)[alive_idx]
    lag1_A = np.asarray(per_latent["autocorr_lag_FK"], dtype=np.float64)[alive_idx][:, 0]
    ratio_A = np.asarray(per_latent["run_length_ratio_F"], dtype=np.float64)[alive_idx]
    profile_AP = np.asarray(position_profile_FP, dtype=np.float64)[alive_idx]
    clusters = sorted(set(labels_A.tolist()))
    pick = [labels_A == c for c in clusters]
    return {
        "clusters": clusters,
        "n_latents": [int(m.sum()) for m in pick],
        "mean_firing_rate": [_finite_mean(rate_A[m]) for m in pick],
        "mean_autocorr_lag1": [_finite_mean(lag1_A[m]) for m in pick],
        "mean_run_length_ratio": [_finite_mean(ratio_A[m]) for m in pick],
        "position_profile": [profile_AP[m].mean(0).tolist() for m in pick],
    }


def _finite_mean(x: np.ndarray) -> float | None:
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else None


def typical_latents(X: np.ndarray, labels_A: np.ndarray, alive_idx: np.ndarray, n: int) -> dict[int, list[int]]:
    """{cluster: the n latents nearest its centroid in descriptor space}, nearest first."""
    out = {}
    for c in sorted(set(labels_A.tolist())):
        rows = np.flatnonzero(labels_A == c)
        distance = ((X[rows] - X[rows].mean(0)) ** 2).sum(1)
        out[c] = alive_idx[rows[np.argsort(distance, kind="stable")[:n]]].tolist()
    return out


class LatentObservations:
    """What the descriptors and examples need, accumulated over eval batches of one SAE's features:
    temporal statistics, position profile, co-firing and (when the batches carry tokens) top contexts."""

    def __init__(self, n_latents: int, context_size: int, max_lag: int, seed: int, top: TopContexts | None = None) -> None:
        self.temporal = TemporalMetrics(n_latents, max_lag=max_lag, seed=seed)
        self.position = PositionProfile(n_latents, n_bins=POSITION_BINS, max_position=context_size)
        self.cofiring = CoFiring(n_latents)
        self.top = top

    def update(self, features_BTF: torch.Tensor, batch: Any) -> None:
        self.temporal.update(features_BTF, batch.doc_start_BT, batch.mask_BT)
        self.position.update(features_BTF, batch.position_BT, batch.mask_BT)
        self.cofiring.update(features_BTF, batch.mask_BT)
        if self.top is not None and batch.tokens_BT is not None:
            self.top.update(features_BTF, batch.tokens_BT, batch.doc_start_BT, batch.mask_BT)

    def examples(self, typical: dict[int, list[int]], tokenizer: Any = None) -> list[dict[str, Any]]:
        """[{"cluster", "latents": [{"latent", "contexts"}]}] for the typical latents; [] without tokens."""
        if self.top is None or self.top.n_sequences == 0:
            return []
        return [{"cluster": c, "latents": [{"latent": i, "contexts": self.top.contexts(i, tokenizer)} for i in latents]}
                for c, latents in typical.items()]


def descriptor_blocks(max_lag: int, coactivation_dims: int) -> dict[str, int]:
    """Width of each descriptor block, in the order of the columns."""
    return {"log10 firing rate": 1, f"autocorrelation, lags 1..{max_lag}": max_lag, "ln(run length / i.i.d.)": 1,
            "position profile": POSITION_BINS, "co-activation (SVD)": coactivation_dims}


@torch.no_grad()
def cluster_run_variant(cfg: Any, name: str, store: Any, run_dir: str | Path, tokenizer: Any = None,
                        progress: bool = True) -> dict[str, Any]:
    """Describe, cluster and embed the latents of `saes/<name>` on the eval split; write and return
    `analysis/clusters_<name>.json`: per alive latent its label, 2-D embedding and kind; the count
    selection, the cluster profiles, example contexts (language models; decoded with `tokenizer`)
    and, with ground truth, the scores against the true kinds."""
    from tsae_core.device import resolve_device
    from tsae_core.evals.core import eval_batches  # late: evaluation pulls in the model stack
    from tsae_core.io import provenance, write_json
    from tsae_core.loading import load_sae
    from tsae_core.sae import recorded_weights_sha256
    from tsae_core.seeds import derive_seed

    cc, run_dir = cfg.cluster, Path(run_dir)
    sae = load_sae(run_dir / "saes" / name, device=resolve_device(cfg.run.device))
    device, F, T = next(sae.parameters()).device, sae.cfg.d_sae, store.context_size
    max_lag = max(1, min(cc.max_lag, T - 1))
    seed = derive_seed(cfg.run.seed, "cluster", name) % 2**32  # scikit-learn takes 32-bit seeds
    wants_examples = cc.example_latents > 0 and cc.example_contexts > 0
    top = TopContexts(F, cc.example_contexts, cc.context_before, cc.context_after) if wants_examples else None
    seen = LatentObservations(F, T, max_lag, derive_seed(cfg.run.seed, "cluster", name), top)
    for batch in tqdm(eval_batches(store, cfg, max_sequences=cc.max_sequences), desc=f"describe {name}", disable=not progress):
        b = batch.to(device)
        seen.update(sae(b.acts_BTD, b.mask_BT, b.doc_start_BT, b.position_BT).features.float().cpu(), batch)

    result = _describe_and_cluster(sae, seen, store, cfg, name, max_lag, seed, tokenizer)
    result["sae_weights_sha256"] = recorded_weights_sha256(run_dir / "saes" / name)  # which weights this describes
    write_json(run_dir / "analysis" / f"clusters_{name}.json", result, stamp=provenance(cfg.hash()))
    return result


def _describe_and_cluster(sae: Any, seen: LatentObservations, store: Any, cfg: Any, name: str, max_lag: int, seed: int,
                          tokenizer: Any) -> dict[str, Any]:
    """The clusters JSON less the weights' hash: descriptors, chosen clusters, profiles, examples, 2-D picture, truth scores."""
    cc, F = cfg.cluster, sae.cfg.d_sae
    per_latent = seen.temporal.result()["per_latent"]
    coactivation_FC = coactivation_embedding(seen.cofiring.matrix(), cc.coactivation_dims, seed)
    position_FP = seen.position.result()
    X, alive_idx = feature_descriptors(per_latent, per_latent["frequency_F"], position_FP, coactivation_FC=coactivation_FC)
    labels, selection = select_clusters(X, cc.candidate_counts(), cc.method, seed)
    truth = store.ground_truth()
    kinds_F = [UNMATCHED] * F if truth is None else latent_kinds(
        sae.decoder_directions().detach().cpu(), truth.directions_GD, truth.kinds, cfg.eval.recovery_threshold)
    cmp = compare_with_truth(labels, [kinds_F[i] for i in alive_idx])
    labels_F = np.full(F, -1, dtype=np.int64)
    labels_F[alive_idx] = labels
    conds = group_condition_numbers(sae.decoder_directions().detach().cpu(), labels_F)
    return {
        "variant": name,
        "n_latents": F,
        "n_alive": len(alive_idx),
        "n_clusters": len(set(labels.tolist())),
        "selection": selection,
        "descriptor_blocks": descriptor_blocks(max_lag, coactivation_FC.shape[1]),
        "coactivation_share": float((coactivation_FC[alive_idx] ** 2).sum(1).mean()) if len(alive_idx) else 0.0,
        "max_lag": max_lag,
        "position_bins": POSITION_BINS,
        "context_size": store.context_size,
        "profile": cluster_profile(labels, per_latent, alive_idx, position_FP),
        "examples": seen.examples(typical_latents(X, labels, alive_idx, cc.example_latents), tokenizer),
        "has_ground_truth": truth is not None,
        "alive_idx": alive_idx.tolist(),
        "labels": labels.tolist(),
        "latent_kind": [kinds_F[i] for i in alive_idx],
        "embedding_2d": embed_2d(X, seed=seed).tolist(),
        # per cluster (in `profile["clusters"]` order; None for a cluster of one latent)
        "decoder_condition_number": [conds.get(c) for c in sorted(set(labels.tolist()))],
        "ari": cmp["adjusted_rand_index"] if truth is not None else None,
        "nmi": cmp["normalized_mutual_information"] if truth is not None else None,
        **{k: v for k, v in cmp.items() if k not in ("adjusted_rand_index", "normalized_mutual_information")},
    }
