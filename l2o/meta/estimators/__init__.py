"""Meta-gradient estimators: truncated backprop, antithetic ES and persistent ES."""

from l2o.meta.estimators.antithetic import AntitheticEstimator
from l2o.meta.estimators.base import Estimate, Estimator, flatten, meta_parameters, unflatten
from l2o.meta.estimators.es import TruncatedES
from l2o.meta.estimators.pes import PersistentES, PESState
from l2o.meta.estimators.tbptt import TruncatedBPTT

ESTIMATORS: dict[str, type[Estimator]] = {"tbptt": TruncatedBPTT, "es": TruncatedES, "pes": PersistentES}

__all__ = [
    "ESTIMATORS",
    "AntitheticEstimator",
    "Estimate",
    "Estimator",
    "PESState",
    "PersistentES",
    "TruncatedBPTT",
    "TruncatedES",
    "flatten",
    "meta_parameters",
    "unflatten",
]
