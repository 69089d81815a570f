"""Evaluation metrics: core (SAEBench-core layout), ground truth (synthetic generator), temporal, position
dependence, cross-position redundancy and decoder geometry."""

from tsae_core.metrics.core import CoreMetrics
from tsae_core.metrics.geometry import decoder_geometry
from tsae_core.metrics.ground_truth import GroundTruthMetrics, decoder_match
from tsae_core.metrics.position import PositionDependence, ReconstructionByPosition
from tsae_core.metrics.redundancy import CrossPositionRedundancy
from tsae_core.metrics.temporal import TemporalMetrics

__all__ = [
    "CoreMetrics", "CrossPositionRedundancy", "GroundTruthMetrics", "PositionDependence", "ReconstructionByPosition",
    "TemporalMetrics", "decoder_geometry", "decoder_match",
]
