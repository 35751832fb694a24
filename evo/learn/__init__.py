"""evo.learn: training a candidate on an increment (head refit, replay memory, metrics, compute cost).

Imports only torch and numpy; never Ray or Optuna.
"""

from evo.learn.cost import Cost, CostMeter, forward_flops, meta_copy, train_flops
from evo.learn.features import Tap, auto_taps, tap_graph
from evo.learn.head import RandomProjection, RidgeHead
from evo.learn.memory import SELECTORS, ExemplarMemory, herding_order
from evo.learn.metrics import (
    AccuracyMatrix,
    average_incremental_accuracy,
    bwt,
    final_accuracy,
    forgetting,
)
from evo.learn.strategies import STRATEGIES, Strategy, list_strategies, make_strategy, register_strategy
from evo.learn.train import TrainConfig

from evo.learn.learner import IncrementReport, Learner  # noqa: E402  isort: skip

__all__ = [
    "SELECTORS",
    "STRATEGIES",
    "AccuracyMatrix",
    "Cost",
    "CostMeter",
    "ExemplarMemory",
    "IncrementReport",
    "Learner",
    "RandomProjection",
    "RidgeHead",
    "Strategy",
    "Tap",
    "TrainConfig",
    "auto_taps",
    "average_incremental_accuracy",
    "bwt",
    "final_accuracy",
    "forgetting",
    "forward_flops",
    "herding_order",
    "list_strategies",
    "make_strategy",
    "meta_copy",
    "register_strategy",
    "tap_graph",
    "train_flops",
]
