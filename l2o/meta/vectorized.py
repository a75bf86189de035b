"""Inner steps of many instances of one task architecture at once, through ``torch.func.vmap``.

Meta-training spends its time on small inner problems (Celo trains 8 tasks of 1-hidden-layer MLPs
on 8x8 images in parallel). Run one by one, each inner step of each instance pays Python and
operator-dispatch overhead for a few kilobytes of arithmetic. Instances that share an
architecture (same task name, same parameter names and shapes; they differ in initial values and
data) can instead carry a leading instance axis: parameters ``[N, *shape]``, optimizer state
likewise, batches ``[N, *batch]``. One vmapped call then computes every instance's loss, its
gradients (``torch.func.grad_and_value``) and the learned update (:func:`~l2o.functional.learned_step`
with one shared rule context), so the overhead is paid once per step for all ``N``.

The per-instance path (``TruncatedStep.unroll``: ``torch.autograd.grad`` then ``learned_step``
for one instance) stays the reference; ``tests/meta/test_vectorized.py`` checks that both give the
same parameters, state and meta-gradients. ``benchmarks/meta_throughput.py`` measures the gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap
from torch.utils._pytree import tree_map

from l2o.functional import learned_step
from l2o.meta.tasks.base import Batch, Task
from l2o.rule import UpdateRule

__all__ = ["stack_instances", "stack_states", "unstack", "vectorized_step"]


def stack_instances(tasks: Sequence[Task]) -> tuple[list[str], list[Tensor]]:
    """Parameter names and initial parameters ``[N, *shape]`` of ``N`` instances of one architecture.

    Raises ``ValueError`` naming the first instance whose task name, parameter names or shapes
    differ from the first's: such tasks cannot share one vmapped step.
    """
    if not tasks:
        raise ValueError("need at least one task instance")
    first = tasks[0].init_params()
    params = [first]
    for k, task in enumerate(tasks[1:], start=1):
        own = task.init_params()
        shapes = {n: tuple(p.shape) for n, p in own.items()}
        expected = {n: tuple(p.shape) for n, p in first.items()}
        if task.name != tasks[0].name or shapes != expected:
            raise ValueError(f"instance {k} ({task.name}, parameters {shapes}) does not share the architecture of "
                             f"instance 0 ({tasks[0].name}, parameters {expected}); vectorize each architecture "
                             "separately")
        params.append(own)
    return list(first), [torch.stack([p[name] for p in params]) for name in first]


def stack_states(states: Sequence[Any]) -> Any:
    """Per-instance optimizer states (pytrees of tensors) -> one state with a leading instance axis."""
    return tree_map(lambda *leaves: torch.stack(leaves), states[0], *states[1:])


def unstack(tree: Any, index: int) -> Any:
    """Instance ``index`` of a stacked pytree (parameters or state)."""
    return tree_map(lambda leaf: leaf[index], tree)


def vectorized_step(
    rule: UpdateRule,
    task: Task,
    names: list[str],
    params: list[Tensor],
    state: Any,
    batch: Batch,
    context: Any = None,
    *,
    meta_params: dict[str, Tensor] | None = None,
    lr: float | Tensor = 1.0,
    weight_decay: float | Tensor = 0.0,
) -> tuple[Tensor, list[Tensor], Any]:
    """One inner step of ``N`` instances of ``task``'s architecture.

    Args:
        rule: the update rule; ``context`` is its context for this architecture (shared).
        task: any one of the instances (its ``loss`` is used for all; it must depend on the
            instance only through parameters and batch, as every task's loss does).
        names: parameter names (:func:`stack_instances`).
        params: ``[N, *shape]`` per parameter.
        state: the rule's optimizer state with a leading instance axis on every tensor
            (:func:`stack_states`).
        batch: each instance's batch, stacked: ``[N, *batch]`` per tensor.
        meta_params: substitute meta-parameters (shared by the instances); gradients flow to them.
        lr: passed to :func:`~l2o.functional.learned_step`.
        weight_decay: passed to :func:`~l2o.functional.learned_step`.

    Returns:
        ``(losses [N], new_params, new_state)``: each instance's loss before the step, and its
        parameters and state after it.
    """

    def one(p: list[Tensor], s: Any, b: Batch) -> tuple[Tensor, list[Tensor], Any]:
        grads, loss = grad_and_value(lambda q: task.loss(dict(zip(names, q)), b))(p)
        new_p, new_s = learned_step(rule, p, grads, s, context, meta_params=meta_params, lr=lr,
                                    weight_decay=weight_decay)
        return loss, new_p, new_s

    return vmap(one)(params, state, batch)
