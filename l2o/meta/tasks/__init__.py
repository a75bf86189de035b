"""Inner problems for meta-training and the registry of task families by name."""

from l2o.meta.tasks.augment import ReparamFamily, ReparamTask
from l2o.meta.tasks.autoencoder import AutoencoderFamily, AutoencoderTask
from l2o.meta.tasks.base import Batch, MixtureFamily, Task, TaskFamily, seeded
from l2o.meta.tasks.image import CNNFamily, ImageClassificationTask, MLPFamily, ResNetFamily
from l2o.meta.tasks.image_data import ImageData, load_image_data
from l2o.meta.tasks.inr import INRFamily, INRTask
from l2o.meta.tasks.quadratic import QuadraticFamily, QuadraticTask
from l2o.meta.tasks.regression import RegressionFamily, RegressionTask
from l2o.meta.tasks.sequence import MarkovChainTask, TransformerFamily

FAMILIES: dict[str, type[TaskFamily]] = {
    "quadratic": QuadraticFamily,
    "mlp": MLPFamily,
    "cnn": CNNFamily,
    "transformer": TransformerFamily,
    "inr": INRFamily,
    "autoencoder": AutoencoderFamily,
    "regression": RegressionFamily,
    "resnet": ResNetFamily,
}

__all__ = [
    "FAMILIES",
    "AutoencoderFamily",
    "AutoencoderTask",
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
    "RegressionFamily",
    "RegressionTask",
    "ReparamFamily",
    "ReparamTask",
    "ResNetFamily",
    "Task",
    "TaskFamily",
    "TransformerFamily",
    "load_image_data",
    "seeded",
]
