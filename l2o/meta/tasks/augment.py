"""Task augmentation by weight reparameterization with random per-tensor scales."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from l2o.meta.seeding import generator
from l2o.meta.tasks.base import Batch, Task, TaskFamily

__all__ = ["ReparamFamily", "ReparamTask"]


class ReparamTask(Task):
    """``task`` trained through ``w = s * v``: the optimizer sees ``v`` (initialised at ``w_0 / s``)
    and its gradients ``s * dL/dw``, so parameter and gradient scales change per tensor while the
    function computed stays the same.

    Batches are the wrapped task's batch followed by the scales ``[n_params]`` (in parameter order):
    the loss reads them from the batch, so it stays a function of parameters and batch alone and
    reparameterized instances of one architecture can share a vmapped step
    (:attr:`~l2o.meta.tasks.base.Task.loss_id`).

    Args:
        task: the task to wrap.
        scales: one positive scale ``s`` per parameter name.
    """

    def __init__(self, task: Task, scales: dict[str, float]) -> None:
        super().__init__(task.model, task.seed)
        self.task, self.scales = task, scales
        self.name = f"{task.name}+reparam"
        self.loss_id = None if task.loss_id is None else f"{task.loss_id}+reparam"
        dtype = next(iter(task.model.parameters())).dtype
        self._scales = torch.tensor([scales[name] for name, _ in task.model.named_parameters()], dtype=dtype)

    def init_params(self) -> dict[str, Tensor]:
        return {k: v / self.scales[k] for k, v in self.task.init_params().items()}

    def batch(self, step: int, split: str = "train") -> Batch:
        return (*self.task.batch(step, split), self._scales)

    def loss(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        *inner, scales = batch
        return self.task.loss({k: v * s for (k, v), s in zip(params.items(), scales)}, tuple(inner))


class ReparamFamily(TaskFamily):
    """Tasks of ``family`` reparameterized with per-tensor scales log-uniform in ``scale_range``."""

    def __init__(self, family: TaskFamily, scale_range: tuple[float, float] = (0.1, 10.0)) -> None:
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.family, self.scale_range = family, (low, high)
        self.name = f"{family.name}+reparam"

    def sample(self, seed: int, instance: int | None = None) -> ReparamTask:
        task = self.family.sample(seed, instance)
        names = [name for name, _ in task.model.named_parameters()]
        low, high = (math.log(v) for v in self.scale_range)
        # per instance: the scales travel in the batch, so instances with their own scales still vectorize
        scale_seed = seed if instance is None else instance
        u = torch.rand(len(names), generator=generator(scale_seed, "reparam"), dtype=torch.float64)
        return ReparamTask(task, {name: math.exp(low + (high - low) * float(x)) for name, x in zip(names, u)})
