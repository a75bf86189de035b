"""Antithetic estimators (ES, PES): two forward unrolls per slot, under ``theta + eps`` and ``theta - eps``."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from l2o.meta.estimators.base import Estimator, flatten, unflatten
from l2o.meta.truncated_step import InnerState, TruncatedStep, UnrollOutput

__all__ = ["AntitheticEstimator"]

Result = tuple[InnerState, UnrollOutput]


class AntitheticEstimator(Estimator):
    """Estimators whose slots each need a positive and a negative unroll without autograd.

    :meth:`estimate_slots` hands the unrolls of all slots to one
    :meth:`~l2o.meta.truncated_step.TruncatedStep.unroll_many` call, so a vectorizing truncated step
    runs every slot of an architecture, positive and negative, as one vmapped inner step. Subclasses
    say which inner runs to unroll (:meth:`runs`) and how to turn the two results into an estimate
    (:meth:`combine`).
    """

    def __init__(self, truncated_step: TruncatedStep, seed: int = 0, sigma: float = 0.01) -> None:
        super().__init__(truncated_step, seed)
        self.sigma = sigma

    @abstractmethod
    def runs(self, state: Any) -> tuple[InnerState, InnerState]:
        """The inner runs to unroll under ``theta + eps`` and ``theta - eps``."""

    @abstractmethod
    def combine(self, state: Any, eps: Tensor, pos: Result, neg: Result) -> tuple[Tensor, Tensor, UnrollOutput, Any]:
        """``(grad [P], meta_loss [], output, new worker state)`` from both unrolls' results."""

    def estimate_slot(
        self, meta_params: dict[str, Tensor], state: Any, meta_step: int
    ) -> tuple[Tensor, Tensor, UnrollOutput, Any]:
        return self.estimate_slots(meta_params, [state], meta_step)[0]

    def estimate_slots(
        self, meta_params: dict[str, Tensor], states: Sequence[Any], meta_step: int
    ) -> list[tuple[Tensor, Tensor, UnrollOutput, Any]]:
        theta = flatten(meta_params.values()).detach()
        runs = [self.runs(state) for state in states]
        eps = [self.noise(meta_step, pos.slot, theta, self.sigma) for pos, _ in runs]
        requests = [(pos, unflatten(theta + e, meta_params)) for (pos, _), e in zip(runs, eps)]
        requests += [(neg, unflatten(theta - e, meta_params)) for (_, neg), e in zip(runs, eps)]
        with torch.no_grad():
            results = self.truncated_step.unroll_many(requests)
        n = len(states)
        return [self.combine(state, e, results[k], results[n + k]) for k, (state, e) in enumerate(zip(states, eps))]
