"""Evaluation metrics: core (SAEBench-core layout), ground truth (synthetic generator), temporal."""

from tsae_core.metrics.core import CoreMetrics
from tsae_core.metrics.ground_truth import GroundTruthMetrics, decoder_match
from tsae_core.metrics.temporal import TemporalMetrics

__all__ = ["CoreMetrics", "GroundTruthMetrics", "TemporalMetrics", "decoder_match"]
