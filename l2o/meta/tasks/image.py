"""Image classification inner problems: MLPs, CNNs and residual CNNs of random shape on in-memory image data."""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2o.meta.seeding import derive_seed
from l2o.meta.tasks.base import Batch, Task, TaskFamily, seeded
from l2o.meta.tasks.image_data import ImageData, load_image_data

__all__ = ["ACTIVATIONS", "CNNFamily", "ImageClassificationTask", "MLPFamily", "ResidualBlock", "ResNetFamily"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


def _check(kind: str, values: Sequence[str], valid: Sequence[str]) -> None:
    unknown = [v for v in values if v not in valid]
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; choose from {sorted(valid)}")


class ImageClassificationTask(Task):
    """Cross-entropy of ``model`` on random mini-batches of ``data``.

    Batches are ``(images [batch_size, C, H, W], labels [batch_size])``.
    """

    def __init__(self, model: nn.Module, data: ImageData, batch_size: int, seed: int, name: str) -> None:
        super().__init__(model, seed)
        self.data, self.batch_size, self.name = data, batch_size, name
        self.loss_id = name  # the name spells out the architecture; the data arrive in the batch

    def batch(self, step: int, split: str = "train") -> Batch:
        images, labels = (
            (self.data.train_images, self.data.train_labels)
            if split == "train"
            else (self.data.test_images, self.data.test_labels)
        )
        index = torch.randint(len(labels), (self.batch_size,), generator=self.generator(split, step))
        return images[index], labels[index]

    def loss(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self.apply(params, images), labels)


class _ImageFamily(TaskFamily):
    """Shared options of the image families.

    Args:
        dataset: see :func:`~l2o.meta.tasks.image_data.load_image_data`.
        batch_size: inner mini-batch size.
        image_size: resize images to this size (``None``: keep).
        max_examples: cap on examples per split.
        activations: activation names to draw from (one per network).
        norms: normalization names to draw from (one per network).
    """

    valid_norms: tuple[str, ...] = ()

    def __init__(
        self,
        dataset: str = "digits",
        batch_size: int = 32,
        image_size: int | None = None,
        max_examples: int | None = None,
        activations: Sequence[str] = ("relu", "tanh", "gelu", "silu"),
        norms: Sequence[str] = ("none",),
    ) -> None:
        _check("activations", activations, list(ACTIVATIONS))
        _check("norms", norms, self.valid_norms)
        self.dataset, self.batch_size = dataset, batch_size
        self.image_size, self.max_examples = image_size, max_examples
        self.activations, self.norms = tuple(activations), tuple(norms)

    def sample(self, seed: int, instance: int | None = None) -> ImageClassificationTask:
        instance = seed if instance is None else instance
        data = load_image_data(self.dataset, self.image_size, self.max_examples)
        rng = random.Random(derive_seed(seed, self.name))
        activation, norm = rng.choice(self.activations), rng.choice(self.norms)
        with seeded(instance):  # the architecture comes from rng alone, the weights from instance
            model, shape = self.build(rng, data, ACTIVATIONS[activation], norm)
        name = f"{self.name}[{self.dataset}]-{shape}-{activation}-{norm}"
        return ImageClassificationTask(model, data, self.batch_size, instance, name)

    @abstractmethod
    def build(
        self, rng: random.Random, data: ImageData, activation: type[nn.Module], norm: str
    ) -> tuple[nn.Module, str]:
        """A random network for ``data`` and a short description of its shape."""


class MLPFamily(_ImageFamily):
    """MLPs on flattened images: ``depth`` hidden layers, each of a width drawn from ``widths``.

    Norms: ``"none"``, ``"layer"`` (LayerNorm), ``"batch"`` (BatchNorm on batch statistics only,
    so the forward pass stays a pure function of the parameters).
    """

    name = "mlp"
    valid_norms = ("none", "layer", "batch")

    def __init__(self, widths: Sequence[int] = (16, 32, 64), depths: Sequence[int] = (1, 2), **options) -> None:
        super().__init__(**options)
        self.widths, self.depths = tuple(widths), tuple(depths)

    def build(
        self, rng: random.Random, data: ImageData, activation: type[nn.Module], norm: str
    ) -> tuple[nn.Module, str]:
        widths = [rng.choice(self.widths) for _ in range(rng.choice(self.depths))]
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = data.train_images[0].numel()
        for width in widths:
            layers.append(nn.Linear(fan_in, width))
            if norm == "layer":
                layers.append(nn.LayerNorm(width))
            elif norm == "batch":
                layers.append(nn.BatchNorm1d(width, track_running_stats=False))
            layers.append(activation())
            fan_in = width
        layers.append(nn.Linear(fan_in, data.num_classes))
        return nn.Sequential(*layers), "x".join(map(str, widths))


class CNNFamily(_ImageFamily):
    """CNNs: ``depth`` conv layers (channels from ``channels``, kernel from ``kernel_sizes``; the first
    keeps the resolution, later ones stride 2), global average pooling and a linear classifier.

    Norms: ``"none"``, ``"batch"`` (batch statistics only), ``"group"`` (GroupNorm, up to 4 groups).
    """

    name = "cnn"
    valid_norms = ("none", "batch", "group")

    def __init__(
        self,
        channels: Sequence[int] = (4, 8, 16),
        depths: Sequence[int] = (1, 2, 3),
        kernel_sizes: Sequence[int] = (3, 5),
        **options,
    ) -> None:
        super().__init__(**options)
        self.channels, self.depths, self.kernel_sizes = tuple(channels), tuple(depths), tuple(kernel_sizes)

    def build(
        self, rng: random.Random, data: ImageData, activation: type[nn.Module], norm: str
    ) -> tuple[nn.Module, str]:
        depth = rng.choice(self.depths)
        shape = [(rng.choice(self.channels), rng.choice(self.kernel_sizes)) for _ in range(depth)]
        layers: list[nn.Module] = []
        c_in = data.train_images.shape[1]
        for i, (c_out, k) in enumerate(shape):
            layers.append(nn.Conv2d(c_in, c_out, k, stride=1 if i == 0 else 2, padding=k // 2))
            layers += [*_channel_norm(c_out, norm), activation()]
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, data.num_classes)]
        return nn.Sequential(*layers), "-".join(f"{c}k{k}" for c, k in shape)


def _channel_norm(channels: int, norm: str) -> list[nn.Module]:
    """The normalization of conv feature maps named ``norm`` (none: ``[]``)."""
    if norm == "batch":
        return [nn.BatchNorm2d(channels, track_running_stats=False)]
    if norm == "group":
        return [nn.GroupNorm(next(g for g in (4, 2, 1) if channels % g == 0), channels)]
    return []


def _conv_norm(channels: int, norm: str) -> list[nn.Module]:
    """A 3x3 convolution ``channels -> channels`` keeping the resolution, then ``norm``."""
    return [nn.Conv2d(channels, channels, 3, padding=1), *_channel_norm(channels, norm)]


class ResidualBlock(nn.Module):
    """``activation(x + body(x))`` with ``body`` = conv-norm-activation-conv-norm (3x3, same channels
    and resolution, so the skip needs no projection). ``forward(x [B, C, H, W]) -> [B, C, H, W]``."""

    def __init__(self, channels: int, activation: type[nn.Module], norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_norm(channels, norm), activation(), *_conv_norm(channels, norm))
        self.activation = activation()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(x + self.body(x))


class ResNetFamily(_ImageFamily):
    """Small residual CNNs: a 3x3 stem convolution (norm, activation) to ``C`` channels, ``blocks``
    :class:`ResidualBlock` s at full resolution, global average pooling and a linear classifier.

    Norms: ``"none"``, ``"batch"`` (batch statistics only, so the forward pass stays a pure function
    of the parameters), ``"group"``.
    """

    name = "resnet"
    valid_norms = ("none", "batch", "group")

    def __init__(self, channels: Sequence[int] = (8, 16), blocks: Sequence[int] = (1, 2), **options) -> None:
        options.setdefault("norms", ("batch",))
        super().__init__(**options)
        self.channels, self.blocks = tuple(channels), tuple(blocks)

    def build(
        self, rng: random.Random, data: ImageData, activation: type[nn.Module], norm: str
    ) -> tuple[nn.Module, str]:
        channels, blocks = rng.choice(self.channels), rng.choice(self.blocks)
        stem = nn.Conv2d(data.train_images.shape[1], channels, 3, padding=1)
        layers: list[nn.Module] = [stem, *_channel_norm(channels, norm), activation()]
        layers += [ResidualBlock(channels, activation, norm) for _ in range(blocks)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, data.num_classes)]
        return nn.Sequential(*layers), f"{channels}x{blocks}blocks"
