"""Regression on a synthetic teacher–student set: MLP students fit a fixed random tanh "teacher"
network of Gaussian inputs, observed with noise (mean squared error).

The set is generated offline from ``data_seed`` and fixed like a real data set; task seeds vary
the student's architecture, initial weights and batch order. Targets are standardized (unit variance
on the train split), so the noise variance ``noise**2`` is the lowest expected test loss and the
gap to it says how well an optimizer fits the teacher; with a few thousand points the student can
also overfit the noise, so train and test losses tell different things.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2o.meta.seeding import derive_seed, generator
from l2o.meta.tasks.base import Batch, Task, TaskFamily, seeded
from l2o.meta.tasks.image import ACTIVATIONS, _check

__all__ = ["RegressionData", "RegressionFamily", "RegressionTask", "teacher_data"]


@dataclass(frozen=True)
class RegressionData:
    """Inputs ``[n, D]`` and targets ``[n, 1]`` of the train and test splits."""

    train_inputs: Tensor
    train_targets: Tensor
    test_inputs: Tensor
    test_targets: Tensor


@lru_cache(maxsize=4)
def teacher_data(
    inputs: int, width: int, depth: int, gain: float, noise: float, train_size: int, test_size: int, seed: int
) -> RegressionData:
    """Gaussian inputs ``x ~ N(0, I_D)`` and targets ``y = standardize(teacher(x)) + noise * N(0, 1)``.

    The teacher is a tanh MLP ``D - width x depth - 1`` with weights ``N(0, gain^2 / fan_in)`` and
    biases ``N(0, 0.1^2)``; a gain above 1 drives the tanh units into their nonlinear range, so the
    function is not close to linear. Everything is drawn from generators keyed by ``seed``.
    """
    gen = generator(seed, "teacher")
    x = torch.randn(train_size + test_size, inputs, generator=gen)
    h, fan_in = x, inputs
    for _ in range(depth):
        weight = torch.randn(fan_in, width, generator=gen) * (gain / math.sqrt(fan_in))
        h, fan_in = torch.tanh(h @ weight + 0.1 * torch.randn(width, generator=gen)), width
    y = h @ (torch.randn(fan_in, 1, generator=gen) / math.sqrt(fan_in))
    y = (y - y[:train_size].mean()) / y[:train_size].std()
    y = y + noise * torch.randn(y.shape, generator=gen)
    return RegressionData(x[:train_size], y[:train_size], x[train_size:], y[train_size:])


class RegressionTask(Task):
    """Mean squared error of ``model(inputs) [B, 1]`` against the targets.

    Batches are ``(inputs [batch_size, D], targets [batch_size, 1])`` drawn from the train or test split.
    """

    def __init__(self, model: nn.Module, data: RegressionData, batch_size: int, seed: int, name: str) -> None:
        super().__init__(model, seed)
        self.data, self.batch_size, self.name = data, batch_size, name
        self.loss_id = name  # the name spells out the architecture; the data arrive in the batch

    def batch(self, step: int, split: str = "train") -> Batch:
        inputs, targets = ((self.data.train_inputs, self.data.train_targets) if split == "train"
                           else (self.data.test_inputs, self.data.test_targets))
        index = torch.randint(len(targets), (self.batch_size,), generator=self.generator(split, step))
        return inputs[index], targets[index]

    def loss(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        inputs, targets = batch
        return F.mse_loss(self.apply(params, inputs), targets)


class RegressionFamily(TaskFamily):
    """MLP students (``depth`` hidden layers of widths drawn from ``widths``) on one teacher set.

    Args:
        inputs: input dimension ``D``.
        widths, depths, activations: student choices drawn per task.
        teacher_width, teacher_depth, teacher_gain: the teacher (see :func:`teacher_data`).
        noise: standard deviation of the target noise (targets have unit variance before it).
        train_size, test_size: points per split.
        batch_size: points per batch.
        data_seed: the seed of the set (fixed across tasks, like a real data set).
    """

    name = "regression"

    def __init__(
        self,
        inputs: int = 16,
        widths: Sequence[int] = (32, 64),
        depths: Sequence[int] = (1, 2),
        activations: Sequence[str] = ("tanh",),
        teacher_width: int = 64,
        teacher_depth: int = 2,
        teacher_gain: float = 2.0,
        noise: float = 0.1,
        train_size: int = 4096,
        test_size: int = 1024,
        batch_size: int = 128,
        data_seed: int = 0,
    ) -> None:
        _check("activations", activations, list(ACTIVATIONS))
        self.inputs, self.widths, self.depths = inputs, tuple(widths), tuple(depths)
        self.activations = tuple(activations)
        self.teacher = (teacher_width, teacher_depth, teacher_gain, noise, train_size, test_size, data_seed)
        self.batch_size = batch_size

    def sample(self, seed: int, instance: int | None = None) -> RegressionTask:
        instance = seed if instance is None else instance
        data = teacher_data(self.inputs, *self.teacher)
        rng = random.Random(derive_seed(seed, self.name))
        widths = [rng.choice(self.widths) for _ in range(rng.choice(self.depths))]
        activation = rng.choice(self.activations)
        layers: list[nn.Module] = []
        fan_in = self.inputs
        with seeded(instance):
            for width in widths:
                layers += [nn.Linear(fan_in, width), ACTIVATIONS[activation]()]
                fan_in = width
            model = nn.Sequential(*layers, nn.Linear(fan_in, 1))
        name = f"{self.name}[teacher{self.teacher[-1]}]-{self.inputs}-{'x'.join(map(str, widths))}-{activation}"
        return RegressionTask(model, data, self.batch_size, instance, name)
