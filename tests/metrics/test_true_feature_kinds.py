"""The temporal metrics read the synthetic benchmark's true codes as the generator made them.

Taking the TRUE feature activations as "latents": slow features (Markov runs within documents) have
a lag-1 autocorrelation well above both shuffled controls, fast ones (i.i.d. per token) sit at the
controls; positional ones (a 4-position window per document) have a position dependence η² far
above its within-document control, while slow and fast ones sit at it. Measured over seeds 0-2 at
these settings: fast |autocorr − control| ≤ 0.03 and |η² − control| ≤ 0.002; slow autocorr − doc
control ≥ 0.10 and − sequence control ≥ 0.55, |η² − control| ≤ 0.007; positional η² ≥ 0.41 with
controls ≤ 0.05.
"""

import numpy as np
import pytest

from tsae_core.metrics.position import PositionDependence
from tsae_core.metrics.temporal import TemporalMetrics
from tsae_core.source_config import SyntheticConfig
from tsae_core.sources.synthetic import SyntheticSource


@pytest.fixture(scope="module", params=[0, 1])
def measured(request):
    cfg = SyntheticConfig(d_model=16, n_fast=24, n_slow=12, n_positional=6, fast_max_rate=0.08, fast_min_rate=0.02,
                          slow_max_rate=0.1, slow_min_rate=0.03, positional_max_position=12, mean_doc_length=32)
    source = SyntheticSource(cfg, context_size=64, seed=request.param)
    batch = source.sequences("eval", 0, 256)
    codes = batch.true_codes_BTG
    tm = TemporalMetrics(codes.shape[-1], max_lag=2, seed=0)
    tm.update(codes, batch.doc_start_BT, batch.mask_BT)
    pd = PositionDependence(codes.shape[-1], seed=0)
    pd.update(codes, batch.position_BT, batch.doc_start_BT, batch.mask_BT)
    t, p = tm.result()["per_latent"], pd.per_latent()
    kinds = np.array(source.ground_truth.kinds)
    stats = {
        "autocorr": np.array(t["autocorr_lag_FK"])[:, 0],
        "sequence_control": np.array(t["autocorr_lag_FK_control"])[:, 0],
        "doc_control": np.array(t["autocorr_lag_FK_doc_shuffled"])[:, 0],
        "eta": p["position_dependence_F"].numpy(),
        "eta_control": p["position_dependence_control_F"].numpy(),
    }
    return {kind: {k: v[kinds == kind] for k, v in stats.items()} for kind in ("fast", "slow", "positional")}


def test_slow_features_persist_beyond_both_controls(measured):
    s = measured["slow"]
    assert (s["autocorr"] > 0.8).all()
    assert (s["autocorr"] - s["sequence_control"] > 0.4).all()
    assert (s["autocorr"] - s["doc_control"] > 0.08).all(), "runs are shorter than documents: order within them counts"
    assert (s["doc_control"] > s["sequence_control"]).mean() > 0.9, "the within-document control is the stricter one"


def test_fast_features_sit_at_the_controls(measured):
    f = measured["fast"]
    assert np.abs(f["autocorr"] - f["doc_control"]).max() < 0.05
    assert np.abs(f["autocorr"] - f["sequence_control"]).max() < 0.05
    assert np.abs(f["autocorr"]).max() < 0.05


def test_positional_features_depend_on_position_far_above_the_control(measured):
    p = measured["positional"]
    assert (p["eta"] > 0.35).all() and (p["eta_control"] < 0.1).all()
    assert (p["eta"] > 5 * p["eta_control"]).all()


@pytest.mark.parametrize("kind", ["fast", "slow"])
def test_other_features_have_position_dependence_at_the_control(measured, kind):
    k = measured[kind]
    assert np.abs(k["eta"] - k["eta_control"]).max() < 0.015
    assert k["eta"].max() < 0.05
