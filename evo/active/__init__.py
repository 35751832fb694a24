"""evo.active: corrections (durable log, rank-one update/undo of the closed-form head, the regression
guard) and query strategies. Imports evo.learn, evo.runs, evo.data, evo.graph, evo.ops; never evo.search
or evo.serve, and evo.learn never imports it."""

from evo.active.engine import CorrectionRecord, CorrectionResult, Corrections, Prediction, Suggestion
from evo.active.errors import CorrectionError
from evo.active.queries import QUERIES
from evo.runs import RunBusyError

__all__ = ["QUERIES", "CorrectionError", "CorrectionRecord", "CorrectionResult", "Corrections", "Prediction",
           "RunBusyError", "Suggestion"]
