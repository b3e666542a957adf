"""Metric-learning losses: batch-hard triplet with masks, distances and reducers."""

from .distances import Distance
from .kd import CC, PKT, SP, DarkRank, FeatureL2, HintonKD
from .multi_teacher import MultiTeacherLoss
from .reducers import REDUCERS, avg_non_zero
from .triplet import BatchHardTripletLoss, TripletLossOutput, mine_batch_hard
from .tscm import TSCMCrossMetric

__all__ = [
    "CC",
    "PKT",
    "REDUCERS",
    "SP",
    "BatchHardTripletLoss",
    "DarkRank",
    "Distance",
    "FeatureL2",
    "HintonKD",
    "MultiTeacherLoss",
    "TSCMCrossMetric",
    "TripletLossOutput",
    "avg_non_zero",
    "mine_batch_hard",
]
