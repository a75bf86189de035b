"""Image classification data for inner problems, held in memory as tensors.

Offline sets (``"digits"``, ``"mnist5k"``) come from :mod:`encoders.data`; any other name is a Hugging
Face dataset: a folder written by ``save_to_disk`` or a hub name for ``datasets.load_dataset``
(e.g. ``"fashion_mnist"``, ``"cifar10"``; needs the network or a filled cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OFFLINE_DATASETS", "ImageData", "load_image_data"]

OFFLINE_DATASETS = ("digits", "mnist5k")


@dataclass(frozen=True)
class ImageData:
    """Train and test images ``[n, C, H, W]`` (float32 in [0, 1]) with labels ``[n]`` (int64)."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int


@lru_cache(maxsize=8)
def load_image_data(name: str, image_size: int | None = None, max_examples: int | None = None) -> ImageData:
    """Load (and cache) an image classification dataset.

    Args:
        name: ``"digits"``, ``"mnist5k"``, a ``save_to_disk`` folder or a hub dataset name.
        image_size: resize images to ``image_size x image_size`` (``None``: keep).
        max_examples: keep at most this many examples per split (``None``: all).
    """
    from encoders.data import load_offline, train_test_split  # imported here: encoders pulls in PyG

    if name in OFFLINE_DATASETS:
        train, test = train_test_split(*load_offline(name), test_fraction=0.2, seed=0)
    else:
        train, test = _load_hf(name)
    splits = []
    for images, labels in (train, test):
        images, labels = images[:max_examples], labels[:max_examples]
        if image_size is not None and images.shape[-1] != image_size:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True)
        splits.append((images.contiguous(), labels))
    (train_images, train_labels), (test_images, test_labels) = splits
    num_classes = int(torch.cat([train_labels, test_labels]).max()) + 1
    return ImageData(train_images, train_labels, test_images, test_labels, num_classes)


def _load_hf(name: str) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    import datasets

    from encoders.data import train_test_split

    source = datasets.load_from_disk(name) if Path(name).exists() else datasets.load_dataset(name)
    if isinstance(source, datasets.Dataset):
        return train_test_split(*_to_tensors(source), test_fraction=0.2, seed=0)
    if "train" not in source:
        raise ValueError(f"dataset {name!r} has no 'train' split (splits: {list(source)})")
    train = _to_tensors(source["train"])
    if "test" not in source:
        return train_test_split(*train, test_fraction=0.2, seed=0)
    return train, _to_tensors(source["test"])


def _to_tensors(dataset) -> tuple[Tensor, Tensor]:
    """``(images [n, C, H, W] in [0, 1], labels [n])`` from a dataset with an image and a label column."""
    import datasets

    columns = dataset.features
    image_col = next((c for c, f in columns.items() if isinstance(f, datasets.Image)), None)
    image_col = image_col or next((c for c in ("image", "img") if c in columns), None)
    label_col = next((c for c in ("label", "labels", "fine_label") if c in columns), None)
    if image_col is None or label_col is None:
        raise ValueError(f"need an image and a label column, found {list(columns)}")
    table = dataset.with_format("numpy")[:]
    images = np.asarray(table[image_col])
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3, 4):
        images = images.transpose(0, 3, 1, 2)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    images = torch.from_numpy(images.astype(np.float32) / scale)
    return images, torch.from_numpy(np.asarray(table[label_col]).astype(np.int64))
