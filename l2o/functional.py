"""The functional core of every learned optimizer in l2o.

:func:`learned_step` is the one place where an update rule is applied. ``NeuralGraphOpt.step``,
the meta-training unrolls and the benchmarks all call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from l2o.distance import ProdigyStatistics, moved
from l2o.rule import UpdateRule

__all__ = ["learned_step", "learned_step_"]


def learned_step(
    rule: UpdateRule,
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, Any],
    context: Any = None,
    *,
    meta_params: dict[str, Tensor] | None = None,
    lr: float | Tensor | Sequence[float | Tensor] = 1.0,
    weight_decay: float | Tensor | Sequence[float | Tensor] = 0.0,
) -> tuple[list[Tensor], dict[str, Any]]:
    """One learned optimizer step, as a pure function.

    Args:
        rule: the update rule (its module parameters are the default meta-parameters).
        params: list of parameter tensors.
        grads: their gradients, in the same order and shapes.
        state: the rule's optimizer state (``rule.init_state(params)`` at the start).
        context: ``rule.build_context(params)``, computed once per architecture.
        meta_params: substitute meta-parameters ``{name: tensor}`` (for meta-training); gradients
            flow to them.
        lr: multiplies the learned update, so schedulers work as with any torch optimizer. One
            value for all parameters, or a list with one value per parameter (parameter groups).
        weight_decay: decoupled weight decay, ``p <- p - lr * weight_decay * p``; one value or
            one per parameter, like ``lr``.

    Returns:
        ``(new_params, new_state)``; inputs are not modified.
    """
    lrs, wds = _options(params, grads, lr, weight_decay)
    if meta_params is None:
        updates, new_state = rule(params, grads, state, context)
    else:
        updates, new_state = functional_call(rule, meta_params, (params, grads, state, context))
    new_params = [_apply(p, u, l, w) for p, u, l, w in zip(params, updates, lrs, wds)]
    if isinstance(rule, ProdigyStatistics):  # its x0 - x: the step applied, which only this function knows
        new_state = {**new_state, "shift": moved(new_state["shift"], updates, lrs)}
    return new_params, new_state


def learned_step_(
    rule: UpdateRule,
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, Any],
    context: Any = None,
    *,
    lr: float | Tensor | Sequence[float | Tensor] = 1.0,
    weight_decay: float | Tensor | Sequence[float | Tensor] = 0.0,
    frozen: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """:func:`learned_step` in place, as ``torch.optim`` steps are: ``params`` are updated in place
    block by block (:meth:`~l2o.rule.UpdateRule.stream_updates`) and ``state`` may be advanced in
    place, so the step's temporary memory stays small. It runs without autograd (meta-training
    differentiates through :func:`learned_step`). The new parameters are bit-identical to
    :func:`learned_step`'s.

    ``frozen[i]`` leaves ``params[i]`` untouched (its statistics still advance; a Prodigy rule's
    ``shift``, which records the moves, does not). Returns the new state.
    """
    lrs, wds = _options(params, grads, lr, weight_decay)
    frozen = frozen or [False] * len(params)
    # a Prodigy rule's x0 - x (l2o.distance.moved), advanced in place as each update is applied: the
    # rule leaves it as it was and reads it before streaming its first update
    shifts = state["shift"] if isinstance(rule, ProdigyStatistics) else None

    def apply(i: int, rows: slice, update: Tensor) -> None:
        if frozen[i]:
            return
        target = params[i] if params[i].ndim == 0 else params[i][rows]
        target.copy_(_apply(target, update.view(target.shape), lrs[i], wds[i]))
        if shifts is not None:
            shift = shifts[i] if shifts[i].ndim == 0 else shifts[i][rows]
            shift.add_(lrs[i] * update.view(shift.shape).to(shift.dtype))

    with torch.no_grad():
        return rule.stream_updates(params, grads, state, context, apply)


def _apply(param: Tensor, update: Tensor, lr: float | Tensor, weight_decay: float | Tensor) -> Tensor:
    """``param - lr * (update + weight_decay * param)``, skipping the decay term when it is a plain 0."""
    update = update.to(param.dtype)
    if isinstance(weight_decay, Tensor) or weight_decay != 0:
        update = update + weight_decay * param
    return param - lr * update


def _options(params: list[Tensor], grads: list[Tensor], lr: Any, weight_decay: Any) -> tuple[list[Any], list[Any]]:
    """Check that there is one gradient per parameter; ``lr`` and ``weight_decay`` per parameter."""
    if len(params) != len(grads):
        raise ValueError(f"got {len(params)} parameters but {len(grads)} gradients")
    return _per_parameter(lr, len(params), "lr"), _per_parameter(weight_decay, len(params), "weight_decay")


def _per_parameter(value: Any, n: int, name: str) -> list[Any]:
    """``value`` repeated ``n`` times, or the list of ``n`` values it already is."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"got {len(value)} values of {name} for {n} parameters")
        return list(value)
    return [value] * n
