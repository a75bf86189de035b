"""Tasks and task families: the inner problems a learned optimizer is meta-trained on.

A :class:`Task` is one inner problem: a plain ``nn.Module`` used only as a structure (its parameters
at construction are the initial values; training runs functionally on a params dict through
``torch.func.functional_call``), a deterministic data stream and a loss. A :class:`TaskFamily`
draws tasks (architectures, data, hyperparameters) from an integer seed.
"""

from __future__ import annotations

import contextlib
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from l2o.meta.seeding import derive_seed

__all__ = ["Batch", "MixtureFamily", "Task", "TaskFamily", "seeded"]

Batch = tuple[Tensor, ...]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. module construction) under ``torch.manual_seed(seed)`` without touching the
    caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Task(ABC):
    """One inner problem.

    Subclasses set ``self.model`` in ``__init__`` (built under :func:`seeded`) and implement
    :meth:`batch` and :meth:`loss`. Batches are a pure function of ``(seed, split, step)``, so the
    positive and negative unrolls of ES/PES see the same data and a resumed run sees the data the
    interrupted one would have seen.
    """

    name: str = "task"
    #: Names the loss as a function of ``(params, batch)`` alone: tasks with equal ``loss_id`` (and
    #: parameter and batch shapes) compute the same loss from the same parameters and batch, so
    #: :class:`~l2o.meta.vectorized.VectorizedStep` can run them as one vmapped call. ``None`` where the
    #: loss also reads per-instance state (a quadratic's curvatures, reparameterization scales):
    #: such tasks always run one by one.
    loss_id: str | None = None

    def __init__(self, model: nn.Module, seed: int) -> None:
        self.model = model
        self.seed = seed

    def init_params(self) -> dict[str, Tensor]:
        """Fresh copies of the initial parameters ``{name: tensor}`` (module order)."""
        return {k: v.detach().clone() for k, v in self.model.named_parameters()}

    def apply(self, params: dict[str, Tensor], *inputs: Any) -> Any:
        """The model's forward pass with ``params`` substituted (functional)."""
        return functional_call(self.model, params, inputs)

    def example_inputs(self) -> tuple | None:
        """Arguments of one forward call of ``self.model``, for ``torch.export`` where ``torch.fx``
        cannot trace the model (:meth:`encoders.NeuralGraph.from_module`); ``None`` where tracing
        needs none."""
        return None

    def generator(self, split: str, step: int) -> torch.Generator:
        """The generator for the batch of ``split`` at inner iteration ``step``."""
        return torch.Generator().manual_seed(derive_seed(self.seed, split, step))

    @abstractmethod
    def batch(self, step: int, split: str = "train") -> Batch:
        """The batch at inner iteration ``step`` of ``split`` (``"train"`` or ``"test"``)."""

    @abstractmethod
    def loss(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        """Scalar loss of ``params`` on ``batch``."""


class TaskFamily(ABC):
    """A distribution over tasks."""

    name: str = "family"

    @abstractmethod
    def sample(self, seed: int, instance: int | None = None) -> Task:
        """Draw the task identified by ``seed`` (the same seeds always give the same task).

        ``seed`` picks the architecture and settings; ``instance`` (default: ``seed``) seeds what
        differs between instances of one task: the initial weights and the data stream. So
        ``sample(s, i)`` for several ``i`` gives instances that share a
        :attr:`~Task.loss_id` and can run as one vmapped step (families whose loss has no
        ``loss_id`` may ignore ``instance``).
        """


class MixtureFamily(TaskFamily):
    """Draws from one of several families, chosen with probability proportional to ``weights``."""

    name = "mixture"

    def __init__(self, families: Sequence[TaskFamily], weights: Sequence[float] | None = None) -> None:
        if not families:
            raise ValueError("a mixture needs at least one task family")
        self.families = list(families)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.families)
        if len(self.weights) != len(self.families) or min(self.weights) <= 0:
            raise ValueError(f"need one positive weight per family, got {self.weights}")

    def sample(self, seed: int, instance: int | None = None) -> Task:
        rng = random.Random(derive_seed(seed, "family"))
        family = rng.choices(self.families, weights=self.weights)[0]
        return family.sample(seed, instance)
