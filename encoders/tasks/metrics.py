"""Metrics of the weight-space tasks."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kendall_tau"]


def kendall_tau(x: Tensor, y: Tensor) -> float:
    """Kendall's tau-b between ``x [n]`` and ``y [n]`` (ties handled as in ``scipy.stats.kendalltau``).

    ``O(n^2)`` memory and time: fine for the few thousand networks of a test split. NaN when
    either input is constant.
    """
    if x.dim() != 1 or x.shape != y.shape:
        raise ValueError(f"kendall_tau needs two 1-D tensors of one length, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < 2:
        raise ValueError("kendall_tau needs at least two values")
    x, y = x.double(), y.double()
    dx = torch.sign(x[:, None] - x[None, :])
    dy = torch.sign(y[:, None] - y[None, :])
    upper = torch.triu(torch.ones_like(dx, dtype=torch.bool), diagonal=1)
    s = float((dx * dy)[upper].sum())
    pairs_x = float((dx[upper] != 0).sum())
    pairs_y = float((dy[upper] != 0).sum())
    if pairs_x == 0 or pairs_y == 0:
        return float("nan")
    return s / (pairs_x * pairs_y) ** 0.5
