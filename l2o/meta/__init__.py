"""Meta-training of update rules, in the separation of learned_optimization.

* :mod:`l2o.meta.tasks` — inner problems and task families (quadratics, MLP/CNN image
  classifiers, small transformers, SIREN fitting; weight-reparameterization augmentation).
* :mod:`l2o.meta.truncated_step` — inner-training state and its functional unroll.
* :mod:`l2o.meta.estimators` — truncated backprop, antithetic ES, persistent ES.
* :mod:`l2o.meta.trainer` — the outer Adam loop, distributed over task slots with accelerate.
* :func:`meta_train` — config in, run folder out (checkpoints, metrics, plot, final rule).
"""

from l2o.meta.config import (
    ConfigError,
    EstimatorConfig,
    InnerConfig,
    MetaTrainConfig,
    OuterConfig,
    RuleConfig,
    TaskConfig,
    TruncationConfig,
    config_from_dict,
    load_config,
)
from l2o.meta.estimators import ESTIMATORS, Estimate, Estimator, PersistentES, TruncatedBPTT, TruncatedES
from l2o.meta.run import MetaTrainingDiverged, meta_train
from l2o.meta.trainer import MetaTrainer, StepResult
from l2o.meta.truncated_step import InnerState, TruncatedStep, UnrollOutput
from l2o.meta.truncation import ConstantSchedule, LogUniformSchedule, TruncationSchedule

__all__ = [
    "ESTIMATORS",
    "ConfigError",
    "ConstantSchedule",
    "Estimate",
    "Estimator",
    "EstimatorConfig",
    "InnerConfig",
    "InnerState",
    "LogUniformSchedule",
    "MetaTrainConfig",
    "MetaTrainer",
    "MetaTrainingDiverged",
    "OuterConfig",
    "PersistentES",
    "RuleConfig",
    "StepResult",
    "TaskConfig",
    "TruncatedBPTT",
    "TruncatedES",
    "TruncatedStep",
    "TruncationConfig",
    "TruncationSchedule",
    "UnrollOutput",
    "config_from_dict",
    "load_config",
    "meta_train",
]
