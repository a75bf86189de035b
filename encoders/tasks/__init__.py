"""Weight-space tasks on model zoos: INR classification, INR editing (dilation), generalization prediction.

``fit(task, encoder=..., zoo=...)`` trains NG-GNN, NG-T or a baseline (``deepsets``, ``mlp``,
``stats``) on a zoo from :mod:`encoders.zoo`; see ``docs/weight_space.md``.
"""

from encoders.tasks.data import CNN_LAYOUT, WeightBatch, WeightSet
from encoders.tasks.metrics import kendall_tau
from encoders.tasks.models import ENCODERS, build_model
from encoders.tasks.standardize import LayerStandardizer
from encoders.tasks.tasks import TASKS, Generalization, InrClassification, InrEditing, WeightTask, make_task
from encoders.tasks.trainer import FitConfig, evaluate, fit

__all__ = [
    "CNN_LAYOUT", "ENCODERS", "TASKS", "FitConfig", "Generalization", "InrClassification", "InrEditing",
    "LayerStandardizer", "WeightBatch", "WeightSet", "WeightTask", "build_model", "evaluate", "fit", "kendall_tau",
    "make_task",
]
