"""Antithetic evolution strategies over one truncation."""

from __future__ import annotations

import torch
from torch import Tensor

from l2o.meta.estimators.base import Estimator, flatten, unflatten
from l2o.meta.truncated_step import InnerState, TruncatedStep, UnrollOutput

__all__ = ["TruncatedES"]


class TruncatedES(Estimator):
    """Antithetic ES: ``g = eps * (L(theta + eps) - L(theta - eps)) / (2 sigma^2)``, ``eps ~ N(0, sigma^2 I)``.

    Both unrolls start from the slot's state; the positive one's end state is kept (as in
    learned_optimization). An unbiased estimate of the gradient of the Gaussian-smoothed meta-loss
    of each truncation; like TBPTT it ignores the effect on the starting state (use PES for that).
    """

    name = "es"

    def __init__(self, truncated_step: TruncatedStep, seed: int = 0, sigma: float = 0.01) -> None:
        super().__init__(truncated_step, seed)
        self.sigma = sigma

    def init_state(self, slot: int) -> InnerState:
        return self.truncated_step.init_state(slot)

    def estimate_slot(
        self, meta_params: dict[str, Tensor], state: InnerState, meta_step: int
    ) -> tuple[Tensor, Tensor, UnrollOutput, InnerState]:
        theta = flatten(meta_params.values()).detach()
        eps = self.noise(meta_step, state.slot, theta, self.sigma)
        with torch.no_grad():
            pos_state, pos = self.truncated_step.unroll(state, unflatten(theta + eps, meta_params))
            _, neg = self.truncated_step.unroll(state, unflatten(theta - eps, meta_params))
        grad = eps * ((pos.meta_loss - neg.meta_loss) / (2 * self.sigma**2))
        loss = (pos.meta_loss + neg.meta_loss) / 2
        return grad, loss, pos, self.advance(pos_state, pos, loss)
