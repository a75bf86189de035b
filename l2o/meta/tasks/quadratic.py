"""Quadratic inner problems: cheap, with known solutions; the toy problem for estimator checks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from l2o.meta.seeding import generator
from l2o.meta.tasks.base import Batch, Task, TaskFamily

__all__ = ["QuadraticFamily", "QuadraticTask"]


class _Quadratic(nn.Module):
    """``x`` with fixed curvatures ``a``: loss ``0.5 * sum(a * (x - c)**2)`` for a target ``c``."""

    def __init__(self, init: Tensor, curvatures: Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(init)
        self.register_buffer("a", curvatures)

    def forward(self, target: Tensor) -> Tensor:
        return 0.5 * (self.a * (self.x - target) ** 2).sum()


class QuadraticTask(Task):
    """``f(x) = 0.5 * sum_i a_i (x_i - c_i)^2`` with ``c ~ noise_std * N(0, I)`` drawn per batch.

    Args:
        init: initial ``x``, shape ``[d]``.
        curvatures: ``a``, shape ``[d]``, positive.
        noise_std: standard deviation of the per-batch target ``c`` (0: deterministic).
        seed: data seed.
    """

    name = "quadratic"

    def __init__(self, init: Tensor, curvatures: Tensor, noise_std: float, seed: int) -> None:
        super().__init__(_Quadratic(init, curvatures), seed)
        self.noise_std = noise_std

    def batch(self, step: int, split: str = "train") -> Batch:
        x = self.model.x
        noise = torch.randn(x.shape, generator=self.generator(split, step), dtype=x.dtype)
        return (self.noise_std * noise,)

    def loss(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        # written out rather than through functional_call: this toy runs thousands of tiny steps
        return 0.5 * (self.model.a * (params["x"] - batch[0]) ** 2).sum()


class QuadraticFamily(TaskFamily):
    """Quadratics of dimension ``dim`` with log-uniform curvatures in ``curvature_range`` and
    ``x_0 ~ N(0, I)``.

    Args:
        dim: number of coordinates.
        curvature_range: ``(low, high)`` of the log-uniform curvature distribution.
        noise_std: per-batch target noise (0: deterministic gradients).
        dtype: ``"float32"`` or ``"float64"``.
    """

    name = "quadratic"

    def __init__(
        self,
        dim: int = 10,
        curvature_range: tuple[float, float] = (0.1, 10.0),
        noise_std: float = 0.0,
        dtype: str = "float32",
    ) -> None:
        self.dim = dim
        self.curvature_range = curvature_range
        self.noise_std = noise_std
        self.dtype = getattr(torch, dtype)

    def sample(self, seed: int, instance: int | None = None) -> QuadraticTask:
        """``instance`` is ignored: a quadratic's loss reads its own curvatures, so its instances never
        share a vmapped step."""
        gen = generator(seed, "quadratic")
        low, high = (math.log(v) for v in self.curvature_range)
        curvatures = torch.exp(low + (high - low) * torch.rand(self.dim, generator=gen, dtype=torch.float64))
        init = torch.randn(self.dim, generator=gen, dtype=torch.float64)
        return QuadraticTask(init.to(self.dtype), curvatures.to(self.dtype), self.noise_std, seed)
