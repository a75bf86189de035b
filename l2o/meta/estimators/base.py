"""The estimator interface: per-slot meta-gradient estimates from truncated unrolls."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from l2o.meta.seeding import generator
from l2o.meta.truncated_step import InnerState, TruncatedStep, UnrollOutput

__all__ = ["Estimate", "Estimator", "flatten", "meta_parameters", "unflatten"]


def meta_parameters(rule: torch.nn.Module) -> dict[str, Tensor]:
    """The rule's trainable meta-parameters ``{name: parameter}`` (those with ``requires_grad``)."""
    return {name: p for name, p in rule.named_parameters() if p.requires_grad}


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenate tensors into one vector ``[P]``."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """Split ``vector [P]`` into tensors shaped like the values of ``like`` (same keys, same order)."""
    out, offset = {}, 0
    for name, ref in like.items():
        out[name] = vector[offset : offset + ref.numel()].view_as(ref)
        offset += ref.numel()
    return out


@dataclass
class Estimate:
    """Meta-gradient estimates of a group of slots.

    Attributes:
        grads: ``[n, P]`` one flat estimate per slot (in the order of :func:`meta_parameters`).
        losses: ``[n]`` the meta-loss of each slot's truncation.
        curves: one record per slot: ``{"slot", "task", "start", "losses"}`` (inner training losses).
    """

    grads: Tensor
    losses: Tensor
    curves: list[dict[str, Any]]


class Estimator(ABC):
    """Turns truncated unrolls of task slots into meta-gradient estimates.

    Subclasses define the per-slot worker state (:meth:`init_state`) and one slot's estimate
    (:meth:`estimate_slot`). Noise is keyed by ``(seed, name, meta_step, slot)`` so that any split
    of the slots over processes gives the same estimates.
    """

    name: str = "estimator"

    def __init__(self, truncated_step: TruncatedStep, seed: int = 0) -> None:
        self.truncated_step = truncated_step
        self.seed = seed

    @abstractmethod
    def init_state(self, slot: int) -> Any:
        """The worker state of ``slot`` at the start of meta-training."""

    @abstractmethod
    def estimate_slot(
        self, meta_params: dict[str, Tensor], state: Any, meta_step: int
    ) -> tuple[Tensor, Tensor, UnrollOutput, Any]:
        """One slot's estimate: ``(grad [P], meta_loss [], unroll output, new worker state)``."""

    def estimate_slots(
        self, meta_params: dict[str, Tensor], states: Sequence[Any], meta_step: int
    ) -> list[tuple[Tensor, Tensor, UnrollOutput, Any]]:
        """:meth:`estimate_slot` of every slot of ``states`` (one at a time here; estimators that can
        unroll slots together override this)."""
        return [self.estimate_slot(meta_params, state, meta_step) for state in states]

    def estimate(
        self, meta_params: dict[str, Tensor], states: Sequence[Any], meta_step: int
    ) -> tuple[Estimate, list[Any]]:
        """Estimates for every slot in ``states`` and their new worker states."""
        grads, losses, curves, new_states = [], [], [], []
        for grad, loss, out, new_state in self.estimate_slots(meta_params, states, meta_step):
            grads.append(grad)
            losses.append(loss)
            curves.append({"slot": out.slot, "task": out.task, "start": out.start, "losses": out.train_losses.tolist()})
            new_states.append(new_state)
        return Estimate(torch.stack(grads), torch.stack(losses), curves), new_states

    def noise(self, meta_step: int, slot: int, theta: Tensor, sigma: float) -> Tensor:
        """Gaussian perturbation ``[P]`` with std ``sigma`` for ``(meta_step, slot)`` (drawn on the CPU, so
        the same on every device, then moved to ``theta``'s)."""
        gen = generator(self.seed, self.name, meta_step, slot)
        return sigma * torch.randn(theta.shape, generator=gen, dtype=theta.dtype).to(theta.device)

    def advance(self, state: InnerState, out: UnrollOutput, loss: Tensor, grad: Tensor | None = None) -> InnerState:
        """``state`` after a truncation, or the slot's next episode when this one ended or diverged
        (a non-finite ``loss`` or meta-gradient ``grad``: an inner run in a state that breaks the
        meta-gradient would break every later truncation of its episode too)."""
        if out.done or not bool(torch.isfinite(loss)) or (grad is not None and not bool(torch.isfinite(grad).all())):
            return self.truncated_step.next_episode(state)
        return state
