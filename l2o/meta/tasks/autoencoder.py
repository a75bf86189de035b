"""MLP autoencoders: reconstruct flattened images through a narrow bottleneck (mean squared error).

Unlike classification, the target is the input itself and the loss has a long early plateau (the
network first outputs the mean image), which is where optimizers that adapt per-parameter scales
differ from plain ones.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2o.meta.seeding import derive_seed
from l2o.meta.tasks.base import Batch, Task, TaskFamily, seeded
from l2o.meta.tasks.image import ACTIVATIONS, _check
from l2o.meta.tasks.image_data import ImageData, load_image_data

__all__ = ["AutoencoderFamily", "AutoencoderTask"]

OUTPUTS = ("sigmoid", "linear")


class AutoencoderTask(Task):
    """Mean squared error between ``model(images)`` ``[B, C*H*W]`` and the flattened images.

    Batches are ``(images [batch_size, C, H, W],)``, drawn from the train or test images of ``data``.
    """

    def __init__(self, model: nn.Module, data: ImageData, batch_size: int, seed: int, name: str) -> None:
        super().__init__(model, seed)
        self.data, self.batch_size, self.name = data, batch_size, name
        self.loss_id = name  # the name spells out the architecture; the data arrive in the batch

    def batch(self, step: int, split: str = "train") -> Batch:
        images = self.data.train_images if split == "train" else self.data.test_images
        index = torch.randint(len(images), (self.batch_size,), generator=self.generator(split, step))
        return (images[index],)

    def loss(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        (images,) = batch
        return F.mse_loss(self.apply(params, images), images.flatten(1))


class AutoencoderFamily(TaskFamily):
    """MLP autoencoders ``D - widths - bottleneck - reversed(widths) - D`` on flattened images
    (``D = C*H*W``), an activation after every layer but the last, and a ``sigmoid`` (pixels are in
    [0, 1]) or ``linear`` output.

    Args:
        dataset, image_size, max_examples: the images (see :func:`~l2o.meta.tasks.image_data.load_image_data`).
        widths: encoder hidden widths drawn from (one per hidden layer; the decoder mirrors them).
        depths: numbers of encoder hidden layers drawn from.
        bottlenecks: code sizes drawn from.
        activations: activation names drawn from.
        output: ``"sigmoid"`` or ``"linear"``.
        batch_size: images per batch.
    """

    name = "autoencoder"

    def __init__(
        self,
        dataset: str = "mnist5k",
        image_size: int | None = 14,
        max_examples: int | None = None,
        widths: Sequence[int] = (64, 128),
        depths: Sequence[int] = (1,),
        bottlenecks: Sequence[int] = (16, 32),
        activations: Sequence[str] = ("relu", "gelu"),
        output: str = "sigmoid",
        batch_size: int = 128,
    ) -> None:
        _check("activations", activations, list(ACTIVATIONS))
        _check("output", [output], OUTPUTS)
        self.dataset, self.image_size, self.max_examples = dataset, image_size, max_examples
        self.widths, self.depths, self.bottlenecks = tuple(widths), tuple(depths), tuple(bottlenecks)
        self.activations, self.output, self.batch_size = tuple(activations), output, batch_size

    def sample(self, seed: int, instance: int | None = None) -> AutoencoderTask:
        instance = seed if instance is None else instance
        data = load_image_data(self.dataset, self.image_size, self.max_examples)
        rng = random.Random(derive_seed(seed, self.name))
        widths = [rng.choice(self.widths) for _ in range(rng.choice(self.depths))]
        bottleneck, activation = rng.choice(self.bottlenecks), rng.choice(self.activations)
        size = data.train_images[0].numel()
        sizes = [size, *widths, bottleneck, *reversed(widths), size]
        with seeded(instance):
            model = _mlp(sizes, ACTIVATIONS[activation], self.output)
        name = f"{self.name}[{self.dataset}]-{'-'.join(map(str, sizes))}-{activation}-{self.output}"
        return AutoencoderTask(model, data, self.batch_size, instance, name)


def _mlp(sizes: list[int], activation: type[nn.Module], output: str) -> nn.Sequential:
    """``Flatten`` then linear layers ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between them."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    if output == "sigmoid":
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)
