"""The tiny regression task shared by the examples: a 2-layer MLP fitting a random linear map.

Small enough that every example trains in seconds on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

IN_FEATURES = 8


def make_model(seed: int = 0, hidden: int = 32) -> nn.Sequential:
    """``Linear(8, hidden) -> Tanh -> Linear(hidden, 1)``, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def make_dataset(n: int = 256, seed: int = 0) -> TensorDataset:
    """``n`` samples ``(x [8], y [1])`` with ``y = x @ w`` for a fixed random ``w`` (``y`` has variance ~1)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_FEATURES, generator=gen)
    w = torch.randn(IN_FEATURES, 1, generator=gen) / IN_FEATURES**0.5
    return TensorDataset(x, x @ w)


def make_loader(batch_size: int = 32, n: int = 256, shuffle: bool = False) -> DataLoader:
    """A loader over :func:`make_dataset` (seeded shuffling when ``shuffle``)."""
    gen = torch.Generator().manual_seed(0)
    return DataLoader(make_dataset(n), batch_size=batch_size, shuffle=shuffle, generator=gen)


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean squared error of ``model`` on one ``(x, y)`` batch."""
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


@torch.no_grad()
def full_loss(model: nn.Module) -> float:
    """The loss on the whole (default) dataset."""
    return loss_fn(model, make_dataset().tensors).item()
