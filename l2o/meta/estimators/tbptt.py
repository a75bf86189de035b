"""Truncated backpropagation through time."""

from __future__ import annotations

from collections.abc import Sequence

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

    With a vectorizing truncated step, every slot unrolls with its own copy of the meta-parameters
    and one backward pass of the sum of the slots' meta-losses gives each copy its slot's
    meta-gradient, so the slots of an architecture run as one vmapped unroll
    (:meth:`~l2o.meta.truncated_step.TruncatedStep.unroll_many`); it holds every slot's graph at
    once. Otherwise slots unroll and backpropagate one at a time.
    """

    name = "tbptt"

    def init_state(self, slot: int) -> InnerState:
        return self.truncated_step.init_state(slot)

    def estimate_slot(
        self, meta_params: dict[str, Tensor], state: InnerState, meta_step: int
    ) -> tuple[Tensor, Tensor, UnrollOutput, InnerState]:
        return self._estimate(meta_params, [state])[0]

    def estimate_slots(
        self, meta_params: dict[str, Tensor], states: Sequence[InnerState], meta_step: int
    ) -> list[tuple[Tensor, Tensor, UnrollOutput, InnerState]]:
        if not self.truncated_step.vectorize:  # slot by slot: one slot's graph in memory at a time
            return [self._estimate(meta_params, [state])[0] for state in states]
        return self._estimate(meta_params, states)

    def _estimate(
        self, meta_params: dict[str, Tensor], states: Sequence[InnerState]
    ) -> list[tuple[Tensor, Tensor, UnrollOutput, InnerState]]:
        copies = [{name: p.detach().clone().requires_grad_() for name, p in meta_params.items()} for _ in states]
        results = self.truncated_step.unroll_many(list(zip(states, copies)), differentiable=True)
        losses = [out.meta_loss for _, out in results]
        leaves = [t for copy in copies for t in copy.values()]
        attached = [loss for loss in losses if loss.requires_grad]
        grads = torch.autograd.grad(sum(attached), leaves, allow_unused=True) if attached else [None] * len(leaves)
        out, per_slot = [], len(meta_params)
        for k, (new_state, unrolled) in enumerate(results):
            own = grads[k * per_slot:(k + 1) * per_slot]
            grad = flatten(torch.zeros_like(t) if g is None else g for g, t in zip(own, meta_params.values()))
            loss = unrolled.meta_loss.detach()
            out.append((grad, loss, unrolled, self.advance(new_state.detached(), unrolled, loss, grad)))
        return out
