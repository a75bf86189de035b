"""Inner steps of many instances of one task architecture at once, through ``torch.func.vmap``.

Meta-training spends its time on small inner problems (Celo trains 8 tasks of 1-hidden-layer MLPs
on 8x8 images in parallel). Run one by one, each inner step of each instance pays Python and
operator-dispatch overhead for a few kilobytes of arithmetic. Instances that share an
architecture (same task name, same parameter names and shapes; they differ in initial values and
data) can instead carry a leading instance axis: parameters ``[N, *shape]``, optimizer state
likewise, batches ``[N, *batch]``. One vmapped call (:class:`VectorizedStep`) then computes every
instance's loss, its gradients (``torch.func.grad_and_value``) and the learned update
(:func:`~l2o.functional.learned_step` with one shared rule context), so the overhead is paid once
per step for all ``N``; compiled, the rule's small operations also fuse across instances.

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

__all__ = ["VectorizedStep", "stack_batches", "stack_instances", "stack_states", "unstack"]


def stack_instances(tasks: Sequence[Task]) -> tuple[list[str], list[Tensor]]:
    """Parameter names and initial parameters ``[N, *shape]`` of ``N`` instances of one architecture.

    Raises ``ValueError`` naming the first instance whose :attr:`~l2o.meta.tasks.base.Task.loss_id`,
    parameter names or shapes differ from the first's, or when the tasks have no ``loss_id``: such
    tasks cannot share one vmapped step.
    """
    if not tasks:
        raise ValueError("need at least one task instance")
    if tasks[0].loss_id is None:
        raise ValueError(f"{tasks[0].name} has no loss_id: its loss reads per-instance state besides the batch, so "
                         "its instances cannot share one vmapped step")
    first = tasks[0].init_params()
    expected = {n: tuple(p.shape) for n, p in first.items()}
    params = [first]
    for k, task in enumerate(tasks[1:], start=1):
        own = task.init_params()
        shapes = {n: tuple(p.shape) for n, p in own.items()}
        if task.loss_id != tasks[0].loss_id or shapes != expected:
            raise ValueError(f"instance {k} ({task.loss_id}, parameters {shapes}) does not share the architecture "
                             f"of instance 0 ({tasks[0].loss_id}, parameters {expected}); vectorize each "
                             "architecture separately")
        params.append(own)
    return list(first), [torch.stack([p[name] for p in params]) for name in first]


def stack_batches(tasks: Sequence[Task], step: int, split: str = "train") -> Batch:
    """Each instance's batch at inner iteration ``step``, stacked: ``[N, *batch]`` per tensor."""
    return tuple(torch.stack(parts) for parts in zip(*[task.batch(step, split) for task in tasks]))


def stack_states(states: Sequence[Any]) -> Any:
    """Per-instance pytrees of tensors (optimizer states, parameter lists, batches) -> one pytree
    with a leading instance axis."""
    return tree_map(lambda *leaves: torch.stack(leaves), states[0], *states[1:])


def unstack(tree: Any, index: int) -> Any:
    """Instance ``index`` of a stacked pytree (parameters or state)."""
    return tree_map(lambda leaf: leaf[index], tree)


class VectorizedStep:
    """One inner step of ``N`` instances of ``task``'s architecture; build once, call every step.

    Args:
        rule: the update rule; ``context`` is its context for this architecture (shared).
        task: any one of the instances (its ``loss`` is used for all; it must depend on the
            instance only through parameters and batch, as every task's loss does).
        names: parameter names (:func:`stack_instances`).
        lr: passed to :func:`~l2o.functional.learned_step`.
        weight_decay: passed to :func:`~l2o.functional.learned_step`.
        compile: run the vmapped step through ``torch.compile`` (inductor fuses the rule's many
            small per-tensor operations across the instance axis; about a minute to compile on
            this machine, then about twice the eager step's throughput at ``N = 128``). Calls
            with and without ``meta_params`` compile separately.
        per_instance_meta: ``meta_params`` carry a leading instance axis too (ES and PES unroll
            each instance under its own perturbed meta-parameters; truncated backprop gets each
            instance's meta-gradient from its own copy); otherwise all instances share them.
        second_order: keep the inner gradients on the autograd graph (as
            ``TruncatedStep(second_order=True)``); ``False`` treats them as constants.
    """

    def __init__(self, rule: UpdateRule, task: Task, names: list[str], context: Any = None, *,
                 lr: float | Tensor = 1.0, weight_decay: float | Tensor = 0.0, compile: bool = False,
                 per_instance_meta: bool = False, second_order: bool = True) -> None:
        self.rule, self.task, self.names, self.context = rule, task, names, context
        self.lr, self.weight_decay, self.second_order = lr, weight_decay, second_order
        batched = vmap(self._one, in_dims=(0, 0, 0, 0 if per_instance_meta else None))
        self.compiled = compile
        self._step = torch.compile(batched) if compile else batched
        self._loss = vmap(lambda params, batch: self.task.loss(dict(zip(self.names, params)), batch))

    def _one(self, params: list[Tensor], state: Any, batch: Batch,
             meta_params: dict[str, Tensor] | None) -> tuple[Tensor, list[Tensor], Any]:
        grads, loss = grad_and_value(lambda q: self.task.loss(dict(zip(self.names, q)), batch))(params)
        if not self.second_order:
            grads = [g.detach() for g in grads]
        new_params, new_state = learned_step(self.rule, params, grads, state, self.context, meta_params=meta_params,
                                             lr=self.lr, weight_decay=self.weight_decay)
        return loss, new_params, new_state

    def __call__(self, params: list[Tensor], state: Any, batch: Batch,
                 meta_params: dict[str, Tensor] | None = None) -> tuple[Tensor, list[Tensor], Any]:
        """Args: ``params`` ``[N, *shape]`` per parameter; ``state``, the rule's optimizer state with
        a leading instance axis on every tensor (:func:`stack_states`); ``batch``, each instance's
        batch stacked (``[N, *batch]`` per tensor); ``meta_params``, substitute meta-parameters
        shared by the instances, or one set per instance (``[N, *shape]`` each) with
        ``per_instance_meta`` (gradients flow to them).

        Returns ``(losses [N], new_params, new_state)``: each instance's loss before the step, and
        its parameters and state after it.
        """
        if self.compiled:
            from l2o.fused import RECOMPILE_LIMIT  # imports torch._dynamo: only when compiling

            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                return self._step(params, state, batch, meta_params)
        return self._step(params, state, batch, meta_params)

    def loss(self, params: list[Tensor], batch: Batch) -> Tensor:
        """``[N]`` each instance's loss on its batch (stacked parameters and batches, as in :meth:`__call__`)."""
        return self._loss(params, batch)
