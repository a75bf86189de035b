"""Persistent evolution strategies (Vicol et al., ICML 2021)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l2o.meta.estimators.base import Estimator, flatten, meta_parameters, unflatten
from l2o.meta.truncated_step import InnerState, TruncatedStep, UnrollOutput

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


class PersistentES(Estimator):
    """PES: antithetic ES whose positive and negative inner runs persist across truncations.

    Each truncation draws ``eps``, adds it to the accumulator ``xi``, unrolls the positive run with
    ``theta + eps`` and the negative run with ``theta - eps`` and estimates
    ``g = xi * (L+ - L-) / (2 sigma^2)``. Because ``xi`` carries every perturbation that shaped the
    current states, the sum of the estimates over an episode is an unbiased estimate of the gradient
    of the (smoothed) sum of its truncation meta-losses. Both runs and ``xi`` restart together at
    the end of an episode.
    """

    name = "pes"

    def __init__(self, truncated_step: TruncatedStep, seed: int = 0, sigma: float = 0.01) -> None:
        super().__init__(truncated_step, seed)
        self.sigma = sigma

    def init_state(self, slot: int) -> PESState:
        return self._fresh(self.truncated_step.init_state(slot))

    def _fresh(self, inner: InnerState) -> PESState:
        theta = flatten(p.detach() for p in meta_parameters(self.truncated_step.rule).values())
        return PESState(inner, inner, torch.zeros_like(theta))

    def estimate_slot(
        self, meta_params: dict[str, Tensor], state: PESState, meta_step: int
    ) -> tuple[Tensor, Tensor, UnrollOutput, PESState]:
        theta = flatten(meta_params.values()).detach()
        eps = self.noise(meta_step, state.pos.slot, theta, self.sigma)
        accumulator = state.accumulator + eps
        with torch.no_grad():
            pos_state, pos = self.truncated_step.unroll(state.pos, unflatten(theta + eps, meta_params))
            neg_state, neg = self.truncated_step.unroll(state.neg, unflatten(theta - eps, meta_params))
        grad = accumulator * ((pos.meta_loss - neg.meta_loss) / (2 * self.sigma**2))
        loss = (pos.meta_loss + neg.meta_loss) / 2
        next_pos = self.advance(pos_state, pos, loss)
        if next_pos.episode != pos_state.episode:  # both runs and the accumulator start over
            return grad, loss, pos, self._fresh(next_pos)
        return grad, loss, pos, PESState(pos_state, neg_state, accumulator)
