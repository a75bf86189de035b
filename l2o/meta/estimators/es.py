"""Antithetic evolution strategies over one truncation."""

from __future__ import annotations

from torch import Tensor

from l2o.meta.estimators.antithetic import AntitheticEstimator, Result
from l2o.meta.truncated_step import InnerState, UnrollOutput

__all__ = ["TruncatedES"]


class TruncatedES(AntitheticEstimator):
    """Antithetic ES: ``g = eps * (L(theta + eps) - L(theta - eps)) / (2 sigma^2)``, ``eps ~ N(0, sigma^2 I)``.

    Both unrolls start from the slot's state; the positive one's end state is kept (as in
    learned_optimization). An unbiased estimate of the gradient of the Gaussian-smoothed meta-loss
    of each truncation; like TBPTT it ignores the effect on the starting state (use PES for that).
    """

    name = "es"

    def init_state(self, slot: int) -> InnerState:
        return self.truncated_step.init_state(slot)

    def runs(self, state: InnerState) -> tuple[InnerState, InnerState]:
        return state, state

    def combine(self, state: InnerState, eps: Tensor, pos: Result,
                neg: Result) -> tuple[Tensor, Tensor, UnrollOutput, InnerState]:
        (pos_state, pos_out), (_, neg_out) = pos, neg
        grad = eps * ((pos_out.meta_loss - neg_out.meta_loss) / (2 * self.sigma**2))
        loss = (pos_out.meta_loss + neg_out.meta_loss) / 2
        return grad, loss, pos_out, self.advance(pos_state, pos_out, loss)
