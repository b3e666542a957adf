"""Metric-learning losses: batch-hard triplet with masks, truncated Smooth-AP, distances and reducers."""

from .combine import WeightedSum
from .distances import Distance
from .kd import CC, PKT, SP, DarkRank, FeatureL2, HintonKD
from .manifolds import (
    MANIFOLDS,
    Euclidean,
    Manifold,
    Poincare,
    Spherical,
    Stereographic,
    make_manifold,
)
from .miners import MINERS, BatchHardMiner, TSCMMiner
from .multi_teacher import MultiTeacherLoss
from .reducers import REDUCERS, avg_non_zero
from .relations import (
    AngleRelation,
    CrossAgentLoss,
    DistanceRelation,
    GeodesicRelation,
    SelfAgentLoss,
)
from .smoothap import TruncatedSmoothAP
from .triplet import BatchHardTripletLoss, TripletLossOutput, mine_batch_hard
from .tscm import TSCMCrossMetric

__all__ = [
    "CC",
    "MANIFOLDS",
    "MINERS",
    "PKT",
    "REDUCERS",
    "SP",
    "AngleRelation",
    "BatchHardMiner",
    "BatchHardTripletLoss",
    "CrossAgentLoss",
    "DarkRank",
    "Distance",
    "DistanceRelation",
    "Euclidean",
    "FeatureL2",
    "GeodesicRelation",
    "HintonKD",
    "Manifold",
    "MultiTeacherLoss",
    "Poincare",
    "SelfAgentLoss",
    "Spherical",
    "Stereographic",
    "TSCMCrossMetric",
    "TSCMMiner",
    "TripletLossOutput",
    "TruncatedSmoothAP",
    "WeightedSum",
    "avg_non_zero",
    "make_manifold",
    "mine_batch_hard",
]
