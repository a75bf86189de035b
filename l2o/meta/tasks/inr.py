"""Implicit neural representations: a SIREN fitted to the intensities of one image."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoders.zoo.siren import Sine
from l2o.meta.seeding import derive_seed
from l2o.meta.tasks.base import Batch, Task, TaskFamily, seeded
from l2o.meta.tasks.image_data import load_image_data

__all__ = ["INRFamily", "INRTask", "Sine", "siren"]


def siren(in_features: int, hidden: int, depth: int, out_features: int, w0: float = 30.0) -> nn.Sequential:
    """SIREN MLP with ``depth`` sine layers of width ``hidden`` and Sitzmann et al.'s initialisation."""
    layers: list[nn.Module] = []
    fan_in = in_features
    for i in range(depth):
        linear = nn.Linear(fan_in, hidden)
        bound = 1 / fan_in if i == 0 else math.sqrt(6 / fan_in) / w0
        nn.init.uniform_(linear.weight, -bound, bound)
        layers += [linear, Sine(w0)]
        fan_in = hidden
    head = nn.Linear(fan_in, out_features)
    nn.init.uniform_(head.weight, -math.sqrt(6 / fan_in) / w0, math.sqrt(6 / fan_in) / w0)
    return nn.Sequential(*layers, head)


class INRTask(Task):
    """Mean squared error of a coordinate network against one image's pixels.

    Batches are ``(coords [B, 2] in [-1, 1], intensities [B, C])``: ``batch_size`` random pixels
    for training (all pixels when ``None``) and all pixels for ``"test"``. ``loss_id``: see
    :attr:`Task.loss_id` (``None``: never vectorized).
    """

    def __init__(self, model: nn.Module, image: Tensor, batch_size: int | None, seed: int, name: str,
                 loss_id: str | None = None) -> None:
        super().__init__(model, seed)
        channels, height, width = image.shape
        grid = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.coords = torch.stack(grid, dim=-1).reshape(-1, 2)
        self.pixels = image.permute(1, 2, 0).reshape(-1, channels)
        self.batch_size, self.name, self.loss_id = batch_size, name, loss_id

    def batch(self, step: int, split: str = "train") -> Batch:
        if split != "train" or self.batch_size is None:
            return self.coords, self.pixels
        index = torch.randint(len(self.pixels), (self.batch_size,), generator=self.generator(split, step))
        return self.coords[index], self.pixels[index]

    def loss(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        coords, pixels = batch
        return F.mse_loss(self.apply(params, coords), pixels)


class INRFamily(TaskFamily):
    """SIRENs of random width and depth, each fitting a random training image of ``dataset``.

    Args:
        dataset: image dataset (see :func:`~l2o.meta.tasks.image_data.load_image_data`).
        hidden, depths: choices drawn per task.
        w0: sine frequency.
        batch_size: pixels per training batch (``None``: every pixel).
        image_size: resize images to this size (``None``: keep).
    """

    name = "inr"

    def __init__(
        self,
        dataset: str = "digits",
        hidden: Sequence[int] = (16, 32),
        depths: Sequence[int] = (1, 2),
        w0: float = 30.0,
        batch_size: int | None = None,
        image_size: int | None = None,
    ) -> None:
        self.dataset, self.hidden, self.depths = dataset, tuple(hidden), tuple(depths)
        self.w0, self.batch_size, self.image_size = w0, batch_size, image_size

    def sample(self, seed: int, instance: int | None = None) -> INRTask:
        data = load_image_data(self.dataset, self.image_size)
        rng = random.Random(derive_seed(seed, self.name))
        index = rng.randrange(len(data.train_images))
        width, depth = rng.choice(self.hidden), rng.choice(self.depths)
        if instance is None:
            instance = seed
        else:  # the image is data: each instance fits its own
            index = random.Random(derive_seed(instance, "image")).randrange(len(data.train_images))
        image = data.train_images[index]
        with seeded(instance):
            model = siren(2, width, depth, image.shape[0], self.w0)
        # the loss reads the image only through the batch: every image shares one loss_id
        return INRTask(model, image, self.batch_size, instance, f"inr[{self.dataset}#{index}]-{width}x{depth}",
                       loss_id=f"inr[{self.dataset}]-{width}x{depth}-w0{self.w0}")
