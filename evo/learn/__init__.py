"""evo.learn: training a candidate on an increment (head refit, replay memory, metrics, compute cost).

Imports only torch and numpy; never Ray or Optuna.
"""

from evo.learn.cost import Cost, CostMeter, forward_flops, meta_copy, train_flops
from evo.learn.head import RandomProjection, RidgeHead
from evo.learn.memory import SELECTORS, ExemplarMemory, herding_order
from evo.learn.metrics import (
    AccuracyMatrix,
    average_incremental_accuracy,
    bwt,
    final_accuracy,
    forgetting,
)

__all__ = [
    "SELECTORS",
    "AccuracyMatrix",
    "Cost",
    "CostMeter",
    "ExemplarMemory",
    "RandomProjection",
    "RidgeHead",
    "average_incremental_accuracy",
    "bwt",
    "final_accuracy",
    "forgetting",
    "forward_flops",
    "herding_order",
    "meta_copy",
    "train_flops",
]
