"""l2o: learned optimization with neural graphs."""

from l2o.adaptive_rule import AdaptiveGraphRule
from l2o.ff import FFRule
from l2o.functional import learned_step, learned_step_
from l2o.graph_rule import NeuralGraphRule
from l2o.hub import from_pretrained, register_rule, save_pretrained
from l2o.optim import NeuralGraphOpt
from l2o.rule import UpdateRule
from l2o.stepsize_rule import StepSizeGraphRule, StepSizeScheduleRule, StepSizeTensorRule

__all__ = [
    "AdaptiveGraphRule",
    "FFRule",
    "NeuralGraphOpt",
    "NeuralGraphRule",
    "StepSizeGraphRule",
    "StepSizeScheduleRule",
    "StepSizeTensorRule",
    "UpdateRule",
    "from_pretrained",
    "learned_step",
    "learned_step_",
    "register_rule",
    "save_pretrained",
]
