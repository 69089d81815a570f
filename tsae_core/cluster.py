"""Cluster learned features by their activation patterns, and compare clusters with the true kinds.

`cluster_run_variant` does the whole stage for one trained SAE (notebook 04); the pieces below it
are plain functions on arrays.

Each alive latent is described by one row of
    [ log10 firing rate | autocorrelation at lags 1..K | ln(run length / i.i.d. run length) | position profile (P) ]
standardised per column (StandardScaler); each block is then divided by sqrt(its width), so the
K autocorrelation columns and the P profile columns weigh as much as one scalar column in total.
KMeans groups the rows; PCA gives a 2-D picture. With a synthetic source, each latent that matches
a true feature (decoder cosine ≥ threshold) carries that feature's kind, and the clusters are scored
against those kinds (contingency table, adjusted Rand index, normalised mutual information, purity).
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
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from tsae_core.metrics.geometry import group_condition_numbers
from tsae_core.metrics.ground_truth import cosine_matrix
from tsae_core.metrics.temporal import TemporalMetrics

UNMATCHED = "unmatched"
POSITION_BINS = 8
"""Bins of position-within-document in the position profile (over 0..context size)."""


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
) -> tuple[np.ndarray, np.ndarray]:
    """Standardised descriptor rows of the alive latents: (X_AP, alive_idx).

    `temporal_per_latent` is `TemporalMetrics.result()["per_latent"]` (uses `alive_F`,
    `autocorr_lag_FK`, `run_length_ratio_F`); `max_lag` keeps the first lags only (None: all).
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
    if len(alive_idx) == 0:
        return np.zeros((0, sum(b.shape[1] for b in blocks))), alive_idx
    scaled = StandardScaler().fit_transform(np.concatenate(blocks, 1))
    widths = np.concatenate([np.full(b.shape[1], b.shape[1], dtype=np.float64) for b in blocks])
    return scaled / np.sqrt(widths), alive_idx


def cluster_features(X: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """KMeans labels (A,) of descriptor rows; fewer clusters than asked when there are fewer rows."""
    if len(X) == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(n_clusters, len(X))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(X).astype(np.int64)


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


def cluster_profile(labels_A: np.ndarray, per_latent: dict[str, Any], alive_idx: np.ndarray) -> dict[str, list]:
    """What each cluster's latents are like, in raw units: size, median firing rate, mean lag-1
    autocorrelation and mean run length relative to an i.i.d. latent of the same rate."""
    rate_A = np.asarray(per_latent["frequency_F"], dtype=np.float64)[alive_idx]
    lag1_A = np.asarray(per_latent["autocorr_lag_FK"], dtype=np.float64)[alive_idx][:, 0]
    ratio_A = np.asarray(per_latent["run_length_ratio_F"], dtype=np.float64)[alive_idx]
    clusters = sorted(set(labels_A.tolist()))
    pick = [labels_A == c for c in clusters]
    return {
        "clusters": clusters,
        "n_latents": [int(m.sum()) for m in pick],
        "median_firing_rate": [float(np.median(rate_A[m])) for m in pick],
        "mean_autocorr_lag1": [float(np.nanmean(lag1_A[m])) for m in pick],
        "mean_run_length_ratio": [float(np.nanmean(ratio_A[m])) for m in pick],
    }


@torch.no_grad()
def cluster_run_variant(cfg: Any, name: str, store: Any, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Describe, cluster and embed the latents of `saes/<name>` on the eval split; write and return
    `analysis/clusters_<name>.json` (labels, embedding_2d and latent_kind per alive latent, scores)."""
    from tsae_core.evaluate import eval_batches  # late: evaluation pulls in the model stack
    from tsae_core.io import provenance, write_json
    from tsae_core.sae import load_sae, recorded_weights_sha256
    from tsae_core.seeds import derive_seed
    from tsae_core.train import resolve_device

    run_dir = Path(run_dir)
    sae = load_sae(run_dir / "saes" / name, device=resolve_device(cfg.run.device))
    device, F, T = next(sae.parameters()).device, sae.cfg.d_sae, store.context_size
    max_lag = max(1, min(cfg.cluster.max_lag, T - 1))
    temporal = TemporalMetrics(F, max_lag=max_lag, seed=derive_seed(cfg.run.seed, "cluster", name))
    profile = PositionProfile(F, n_bins=POSITION_BINS, max_position=T)
    batches = eval_batches(store, cfg, max_sequences=cfg.cluster.max_sequences)
    for batch in tqdm(batches, desc=f"describe {name}", disable=not progress):
        b = batch.to(device)
        features_BTF = sae(b.acts_BTD, b.mask_BT, b.doc_start_BT, b.position_BT).features.float().cpu()
        temporal.update(features_BTF, batch.doc_start_BT, batch.mask_BT)
        profile.update(features_BTF, batch.position_BT, batch.mask_BT)

    per_latent = temporal.result()["per_latent"]
    X, alive_idx = feature_descriptors(per_latent, per_latent["frequency_F"], profile.result())
    seed = derive_seed(cfg.run.seed, "cluster", name) % 2**32  # scikit-learn takes 32-bit seeds
    labels = cluster_features(X, cfg.cluster.n_clusters, seed=seed)
    truth = store.ground_truth()
    if truth is not None:
        kinds_F = latent_kinds(sae.decoder_directions().detach().cpu(), truth.directions_GD, truth.kinds, cfg.eval.recovery_threshold)
    else:
        kinds_F = [UNMATCHED] * F
    kinds_A = [kinds_F[i] for i in alive_idx]
    cmp = compare_with_truth(labels, kinds_A)
    labels_F = np.full(F, -1, dtype=np.int64)
    labels_F[alive_idx] = labels
    conds = group_condition_numbers(sae.decoder_directions().detach().cpu(), labels_F)
    result = {
        "profile": cluster_profile(labels, per_latent, alive_idx),
        "variant": name,
        "n_latents": F,
        "n_alive": len(alive_idx),
        "n_clusters": len(set(labels.tolist())),
        "max_lag": max_lag,
        "position_bins": POSITION_BINS,
        "has_ground_truth": truth is not None,
        "alive_idx": alive_idx.tolist(),
        "labels": labels.tolist(),
        "latent_kind": kinds_A,
        "embedding_2d": embed_2d(X, seed=seed).tolist(),
        # per cluster (in `profile["clusters"]` order; None for a cluster of one latent)
        "decoder_condition_number": [conds.get(c) for c in sorted(set(labels.tolist()))],
        "ari": cmp["adjusted_rand_index"],
        "nmi": cmp["normalized_mutual_information"],
        **{k: v for k, v in cmp.items() if k not in ("adjusted_rand_index", "normalized_mutual_information")},
        "sae_weights_sha256": recorded_weights_sha256(run_dir / "saes" / name),  # which weights this describes
    }
    write_json(run_dir / "analysis" / f"clusters_{name}.json", result, stamp=provenance(cfg.hash()))
    return result
