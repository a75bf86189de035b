"""Truncated backpropagation through time."""

from __future__ import annotations

import torch
from torch import Tensor

from l2o.meta.estimators.base import Estimator, flatten
from l2o.meta.truncated_step import InnerState, UnrollOutput

__all__ = ["TruncatedBPTT"]


class TruncatedBPTT(Estimator):
    """Backpropagate the meta-loss of each truncation to the meta-parameters.

    The inner state is detached between truncations, so the estimate ignores how the meta-parameters
    shaped the state a truncation starts from: biased unless the truncation covers the whole
    episode (then it is the exact gradient). ``unroll_length = 1`` with the ``train_mean`` meta-loss
    is the greedy one-step scheme.
    """

    name = "tbptt"

    def init_state(self, slot: int) -> InnerState:
        return self.truncated_step.init_state(slot)

    def estimate_slot(
        self, meta_params: dict[str, Tensor], state: InnerState, meta_step: int
    ) -> tuple[Tensor, Tensor, UnrollOutput, InnerState]:
        new_state, out = self.truncated_step.unroll(state, meta_params, differentiable=True)
        tensors = list(meta_params.values())
        if out.meta_loss.requires_grad:
            grads = torch.autograd.grad(out.meta_loss, tensors, allow_unused=True)
        else:
            grads = (None,) * len(tensors)
        grad = flatten(torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors))
        loss = out.meta_loss.detach()
        return grad, loss, out, self.advance(new_state.detached(), out, loss, grad)
