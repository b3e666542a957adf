"""Metric-learning losses: batch-hard triplet with masks, distances and reducers."""

from .distances import Distance
from .reducers import REDUCERS, avg_non_zero
from .triplet import BatchHardTripletLoss, TripletLossOutput, mine_batch_hard

__all__ = ["REDUCERS", "BatchHardTripletLoss", "Distance", "TripletLossOutput", "avg_non_zero", "mine_batch_hard"]
