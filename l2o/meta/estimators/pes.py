"""Persistent evolution strategies (Vicol et al., ICML 2021)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l2o.meta.estimators.antithetic import AntitheticEstimator, Result
from l2o.meta.estimators.base import flatten, meta_parameters
from l2o.meta.truncated_step import InnerState, UnrollOutput

__all__ = ["PESState", "PersistentES"]


@dataclass
class PESState:
    """One slot's PES state.

    Attributes:
        pos, neg: the inner runs under the positive and the negative perturbations.
        accumulator: ``[P]`` sum of the positive perturbations applied so far in this episode.
    """

    pos: InnerState
    neg: InnerState
    accumulator: Tensor


class PersistentES(AntitheticEstimator):
    """PES: antithetic ES whose positive and negative inner runs persist across truncations.

    Each truncation draws ``eps``, adds it to the accumulator ``xi``, unrolls the positive run with
    ``theta + eps`` and the negative run with ``theta - eps`` and estimates
    ``g = xi * (L+ - L-) / (2 sigma^2)``. Because ``xi`` carries every perturbation that shaped the
    current states, the sum of the estimates over an episode is an unbiased estimate of the gradient
    of the (smoothed) sum of its truncation meta-losses. Both runs and ``xi`` restart together at
    the end of an episode.
    """

    name = "pes"

    def init_state(self, slot: int) -> PESState:
        return self._fresh(self.truncated_step.init_state(slot))

    def _fresh(self, inner: InnerState) -> PESState:
        theta = flatten(p.detach() for p in meta_parameters(self.truncated_step.rule).values())
        return PESState(inner, inner, torch.zeros_like(theta))

    def runs(self, state: PESState) -> tuple[InnerState, InnerState]:
        return state.pos, state.neg

    def combine(self, state: PESState, eps: Tensor, pos: Result,
                neg: Result) -> tuple[Tensor, Tensor, UnrollOutput, PESState]:
        (pos_state, pos_out), (neg_state, neg_out) = pos, neg
        accumulator = state.accumulator + eps
        grad = accumulator * ((pos_out.meta_loss - neg_out.meta_loss) / (2 * self.sigma**2))
        loss = (pos_out.meta_loss + neg_out.meta_loss) / 2
        next_pos = self.advance(pos_state, pos_out, loss)
        if next_pos.episode != pos_state.episode:  # both runs and the accumulator start over
            return grad, loss, pos_out, self._fresh(next_pos)
        return grad, loss, pos_out, PESState(pos_state, neg_state, accumulator)
