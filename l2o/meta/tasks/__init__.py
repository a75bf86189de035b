"""Inner problems for meta-training and the registry of task families by name."""

from l2o.meta.tasks.augment import ReparamFamily, ReparamTask
from l2o.meta.tasks.base import Batch, MixtureFamily, Task, TaskFamily, seeded
from l2o.meta.tasks.image import CNNFamily, ImageClassificationTask, MLPFamily
from l2o.meta.tasks.image_data import ImageData, load_image_data
from l2o.meta.tasks.inr import INRFamily, INRTask
from l2o.meta.tasks.quadratic import QuadraticFamily, QuadraticTask
from l2o.meta.tasks.sequence import MarkovChainTask, TransformerFamily

FAMILIES: dict[str, type[TaskFamily]] = {
    "quadratic": QuadraticFamily,
    "mlp": MLPFamily,
    "cnn": CNNFamily,
    "transformer": TransformerFamily,
    "inr": INRFamily,
}

__all__ = [
    "FAMILIES",
    "Batch",
    "CNNFamily",
    "INRFamily",
    "INRTask",
    "ImageClassificationTask",
    "ImageData",
    "MLPFamily",
    "MarkovChainTask",
    "MixtureFamily",
    "QuadraticFamily",
    "QuadraticTask",
    "ReparamFamily",
    "ReparamTask",
    "Task",
    "TaskFamily",
    "TransformerFamily",
    "load_image_data",
    "seeded",
]
