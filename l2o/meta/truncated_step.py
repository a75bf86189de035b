"""The truncated step: inner-training state and its unroll over one truncation.

:class:`TruncatedStep` owns everything about inner training — which task a slot trains, its episode
length and random initial offset, and running ``K`` functional inner steps with
:func:`l2o.functional.learned_step` under given meta-parameters. Estimators only decide which
meta-parameters to unroll with and how to turn the resulting meta-losses into gradients.

:meth:`TruncatedStep.unroll` runs one inner run (the reference path); :meth:`TruncatedStep.unroll_many`
runs several without autograd (ES, PES) and, with ``vectorize``, carries the runs whose tasks share
an architecture through one :class:`~l2o.meta.vectorized.VectorizedStep` per inner step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from l2o.functional import learned_step
from l2o.meta.seeding import derive_seed
from l2o.meta.tasks.base import Batch, Task, TaskFamily
from l2o.meta.truncation import TruncationSchedule
from l2o.meta.vectorized import VectorizedStep, stack_states, unstack
from l2o.rule import UpdateRule

__all__ = ["META_LOSSES", "InnerState", "TruncatedStep", "UnrollOutput", "loss_and_grads"]

META_LOSSES = ("train_mean", "log_train_mean", "heldout_last")


@dataclass
class InnerState:
    """One inner training run in progress.

    Attributes:
        slot: global index of the task slot (stable across processes).
        episode: how many inner runs this slot finished before this one.
        step: inner iteration of the next step.
        length: the episode ends when ``step == length``.
        params: inner parameters, in the task's parameter order.
        opt_state: the rule's optimizer state.
        initial_loss: the episode's first training loss (set by its first truncation).
    """

    slot: int
    episode: int
    step: int
    length: int
    params: list[Tensor]
    opt_state: dict[str, Any]
    initial_loss: float | None = None

    def detached(self) -> InnerState:
        """The same state cut from any autograd graph."""
        return replace(self, params=[p.detach() for p in self.params], opt_state=tree_map(_detach, self.opt_state))


def _detach(x: Any) -> Any:
    return x.detach() if isinstance(x, Tensor) else x


@dataclass
class UnrollOutput:
    """What one truncation produced.

    Attributes:
        slot: the slot that was unrolled.
        meta_loss: scalar; differentiable w.r.t. the meta-parameters when the unroll was.
        train_losses: ``[k]`` inner training loss before each of the ``k`` steps (detached).
        start: inner iteration of the first step.
        task: the task's name.
        done: whether the episode ended with this truncation (its last step, or it diverged).
    """

    slot: int
    meta_loss: Tensor
    train_losses: Tensor
    start: int
    task: str
    done: bool


def loss_and_grads(
    task: Task, names: list[str], params: list[Tensor], batch: Batch, create_graph: bool
) -> tuple[Tensor, list[Tensor]]:
    """Inner loss and its gradients w.r.t. ``params`` (kept on the graph when ``create_graph``): one
    instance's step of the reference path, which the vectorized path is tested and measured against."""
    with torch.enable_grad():
        params = [p if p.requires_grad else p.detach().requires_grad_() for p in params]
        loss = task.loss(dict(zip(names, params)), batch)
        grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return loss, list(grads)


@dataclass
class _TaskEntry:
    task: Task
    names: list[str]
    context: Any
    #: equal for tasks one vmapped step can run together (``loss_id``, parameter and batch shapes);
    #: ``None`` for tasks without a ``loss_id`` and when the step does not vectorize
    architecture: Hashable | None


class TruncatedStep:
    """Inner training of task slots, one truncation at a time.

    Args:
        rule: the update rule being meta-trained.
        family: where each episode's task comes from.
        schedule: episode lengths.
        unroll_length: inner steps per truncation ``K`` (the last truncation of an episode may be
            shorter, so truncations never straddle two tasks).
        meta_loss: ``"train_mean"`` — mean over the truncation's steps of the loss of the updated
            parameters on that step's batch (``K = 1`` is the greedy scheme); ``"log_train_mean"`` —
            the mean of the logarithms of those losses (capped first, floored at ``1e-12``): every task
            then weighs by its relative progress whatever its loss scale, as the geometric-mean
            ratios of the evaluation do, where the plain mean lets the tasks with the largest losses
            (those just starting an episode) dominate the meta-gradient; ``"heldout_last"`` — loss
            of the parameters after the truncation on a held-out batch.
        second_order: differentiable unrolls differentiate through the inner gradients (their
            dependence on the parameters, Hessian-vector products); ``False`` treats them as
            constants (first-order truncated backprop: cheaper, and free of the second
            derivatives of the statistics' ``rsqrt`` near zero, which can overflow).
        lr: passed to :func:`~l2o.functional.learned_step`.
        weight_decay: passed to :func:`~l2o.functional.learned_step`.
        initial_offset: the first episode of each slot starts at a random inner iteration in
            ``[0, min(initial_offset, length - 1)]`` so that slots finish at different times.
        divergence: ``None`` (off), or a factor ``c``: each meta-loss term is capped at ``c`` times
            the episode's first training loss (a capped term passes no meta-gradient), and an
            episode whose training loss exceeds that bound (or is not finite) ends with this
            truncation. Why: one inner run that blows up (a loss of 1e10 on a regression) would
            otherwise dominate the mean meta-loss of every slot, and its meta-gradient, for the
            rest of its episode; clipping cannot fix the direction of such a gradient.
        seed: keys every task, length and offset draw.
        device: where the inner problems run (their models, parameters and batches; the rule must be
            there too). Batches are still drawn on the CPU, so every device sees the same data.
        vectorize: :meth:`unroll_many` runs the inner runs whose tasks share a
            :attr:`~l2o.meta.tasks.base.Task.loss_id`, parameter and batch shapes and truncation
            length as one vmapped step (the same results up to float rounding; several times the
            inner steps per second when many slots share an architecture).
        instances_per_task: slots come in consecutive blocks of this many; the slots of a block
            train instances of one task draw (:meth:`TaskFamily.sample` with the block's seed and
            their own ``instance``: one architecture, their own initial weights and data) over
            episodes of the same length from the same starting offset, so they stay in step and
            vectorize together (as Celo's parallel instances of each task do). A slot whose
            episode ends early (divergence) falls out of step with its block for the rest of
            the run. ``1``: every slot draws its own task.
        compile: with ``vectorize``, run the vmapped steps through ``torch.compile``. Each group
            is padded (with copies of its first run, whose results are dropped) to the next power
            of two, so an architecture compiles once per group size 2, 4, 8, ... (30-70 s each on
            this machine) rather than once per size that episode ends happen to leave.
    """

    def __init__(
        self,
        rule: UpdateRule,
        family: TaskFamily,
        schedule: TruncationSchedule,
        *,
        unroll_length: int,
        meta_loss: str = "train_mean",
        second_order: bool = True,
        lr: float = 1.0,
        weight_decay: float = 0.0,
        initial_offset: int = 0,
        divergence: float | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        vectorize: bool = False,
        instances_per_task: int = 1,
        compile: bool = False,
    ) -> None:
        if divergence is not None and not divergence > 1:
            raise ValueError(f"divergence must be a factor > 1 or None, got {divergence}")
        if meta_loss not in META_LOSSES:
            raise ValueError(f"unknown meta_loss {meta_loss!r}; choose one of {list(META_LOSSES)}")
        if unroll_length < 1:
            raise ValueError(f"unroll_length must be >= 1, got {unroll_length}")
        if instances_per_task < 1:
            raise ValueError(f"instances_per_task must be >= 1, got {instances_per_task}")
        if compile and not vectorize:
            raise ValueError("compile applies to the vectorized unrolls: set vectorize=True too")
        self.rule, self.family, self.schedule = rule, family, schedule
        self.unroll_length, self.meta_loss, self.second_order = unroll_length, meta_loss, second_order
        self.lr, self.weight_decay = lr, weight_decay
        self.initial_offset, self.divergence, self.seed = initial_offset, divergence, seed
        self.device, self.vectorize, self.compile = torch.device(device), vectorize, compile
        self.instances_per_task = instances_per_task
        self._tasks: dict[tuple[int, int], _TaskEntry] = {}
        self._vectorized: dict[Hashable, VectorizedStep] = {}

    def task(self, slot: int, episode: int) -> _TaskEntry:
        """The task trained by ``slot`` in ``episode``, with its parameter names and rule context."""
        key = (slot, episode)
        if key not in self._tasks:
            for stale in [k for k in self._tasks if k[0] == slot]:
                del self._tasks[stale]
            block = slot // self.instances_per_task  # equal to slot when every slot draws its own task
            task = self.family.sample(derive_seed(self.seed, "task", block, episode),
                                      derive_seed(self.seed, "task", slot, episode))
            task.model.to(self.device)
            params = task.init_params()
            context = self.rule.context_for(list(params.values()), task.model, task.example_inputs())
            architecture = None
            if self.vectorize and task.loss_id is not None:  # draws a batch: only when it is used
                architecture = (task.loss_id, tuple((n, tuple(p.shape)) for n, p in params.items()),
                                tuple(tuple(x.shape) for x in task.batch(0)))
            self._tasks[key] = _TaskEntry(task, list(params), context, architecture)
        return self._tasks[key]

    def init_state(self, slot: int, episode: int = 0) -> InnerState:
        """A fresh inner run for ``slot``: new task, initial parameters and optimizer state."""
        entry = self.task(slot, episode)
        params = list(entry.task.init_params().values())
        block = slot // self.instances_per_task
        length = self.schedule.sample(derive_seed(self.seed, "length", block, episode))
        step = 0
        if episode == 0 and self.initial_offset > 0:
            step = random.Random(derive_seed(self.seed, "offset", block)).randint(
                0, min(self.initial_offset, length - 1)
            )
        return InnerState(slot, episode, step, length, params, self.rule.init_state(params))

    def next_episode(self, state: InnerState) -> InnerState:
        """The inner run that follows ``state`` in its slot."""
        return self.init_state(state.slot, state.episode + 1)

    def unroll(
        self, state: InnerState, meta_params: dict[str, Tensor] | None = None, differentiable: bool = False
    ) -> tuple[InnerState, UnrollOutput]:
        """Run one truncation: ``min(K, length - step)`` inner steps from ``state``.

        Args:
            state: where to start (not modified).
            meta_params: meta-parameters to unroll with (default: the rule's own).
            differentiable: build the graph from ``meta_params`` to the meta-loss (TBPTT);
                otherwise run without autograd except for the inner gradients.

        Returns:
            ``(new_state, output)``; ``new_state`` is still attached to the graph when
            ``differentiable``.
        """
        if state.step >= state.length:
            raise ValueError(f"slot {state.slot} finished its episode; call next_episode first")
        entry = self.task(state.slot, state.episode)
        task, names = entry.task, entry.names

        def step(params: list[Tensor], opt_state: Any, batch: Batch) -> tuple[Tensor, list[Tensor], Any]:
            loss, grads = loss_and_grads(task, names, params, batch, differentiable and self.second_order)
            params, opt_state = learned_step(self.rule, params, grads, opt_state, entry.context,
                                             meta_params=meta_params, lr=self.lr, weight_decay=self.weight_decay)
            return loss.unsqueeze(0), params, opt_state

        def loss(params: list[Tensor], batch: Batch) -> Tensor:
            return task.loss(dict(zip(names, params)), batch).unsqueeze(0)

        return self._truncation([state], [entry], step, loss, state.params, state.opt_state,
                                lambda offset, split: self._batch(task, state.step + offset, split),
                                lambda params, opt_state, k: (params, opt_state), differentiable)[0]

    def unroll_many(
        self, requests: Sequence[tuple[InnerState, dict[str, Tensor] | None]], differentiable: bool = False
    ) -> list[tuple[InnerState, UnrollOutput]]:
        """One truncation of each ``(state, meta_params)`` in ``requests``.

        Without ``vectorize`` this is :meth:`unroll` of each request in turn. With it, the requests
        whose tasks share an architecture and whose truncations have the same length run together
        through one vmapped step (:meth:`_unroll_together`); the rest run one by one. Returns the
        results in the order of ``requests``. ``differentiable``: as in :meth:`unroll` (truncated
        backprop; give each request its own meta-parameter tensors to get per-run meta-gradients
        from one backward pass); such groups run eagerly even with ``compile``.
        """
        results: list[tuple[InnerState, UnrollOutput] | None] = [None] * len(requests)
        groups: dict[Hashable, list[int]] = {}
        for i, (state, _) in enumerate(requests):
            if state.step >= state.length:
                raise ValueError(f"slot {state.slot} finished its episode; call next_episode first")
            architecture = self.task(state.slot, state.episode).architecture
            if architecture is None:
                groups[("alone", i)] = [i]
            else:
                groups.setdefault((architecture, min(self.unroll_length, state.length - state.step)), []).append(i)
        with torch.set_grad_enabled(differentiable):
            for members in groups.values():
                if len(members) == 1:
                    results[members[0]] = self.unroll(*requests[members[0]], differentiable=differentiable)
                    continue
                together = self._unroll_together([requests[i] for i in members], differentiable)
                for i, result in zip(members, together):
                    results[i] = result
        return results  # type: ignore[return-value]

    def _unroll_together(
        self, requests: Sequence[tuple[InnerState, dict[str, Tensor] | None]], differentiable: bool
    ) -> list[tuple[InnerState, UnrollOutput]]:
        """:meth:`unroll` of inner runs of one architecture and truncation length as one vmapped run:
        parameters, optimizer states, batches and meta-parameters stacked on a leading instance axis."""
        states = [state for state, _ in requests]
        entries = [self.task(s.slot, s.episode) for s in states]
        first = entries[0]
        compiled = self.compile and not differentiable  # backprop through the compiled step is untested
        key = (first.architecture, differentiable)
        if key not in self._vectorized:  # one vmapped step per architecture (and mode), reused
            self._vectorized[key] = VectorizedStep(
                self.rule, first.task, first.names, first.context, lr=self.lr, weight_decay=self.weight_decay,
                compile=compiled, per_instance_meta=True, second_order=self.second_order)
        step_all = self._vectorized[key]
        own = {n: p if differentiable else p.detach() for n, p in self.rule.named_parameters() if p.requires_grad}
        metas = [own if meta is None else meta for _, meta in requests]
        n = len(states)
        pad = (1 << (n - 1).bit_length()) - n if compiled else 0

        def stacked(tree: Any) -> Any:  # per-run pytrees -> one with a leading run axis, padded
            return tree_map(lambda x: torch.cat([x, x[:1].expand(pad, *x.shape[1:])]) if pad else x,
                            stack_states(tree))

        meta_params, params = stacked(metas), stacked([s.params for s in states])
        opt_state = stacked([s.opt_state for s in states])

        def batches(offset: int, split: str) -> Batch:
            return stacked([self._batch(e.task, s.step + offset, split) for e, s in zip(entries, states)])

        def run(params: list[Tensor], opt_state: Any, k: int) -> tuple[list[Tensor], Any]:
            # clones: a view of run k would keep, and a checkpoint would save, the whole stacked tensor
            return [p.clone() for p in unstack(params, k)], tree_map(torch.clone, unstack(opt_state, k))

        return self._truncation(states, entries, lambda p, o, b: step_all(p, o, b, meta_params), step_all.loss,
                                params, opt_state, batches, run, differentiable)

    def _truncation(
        self, states: Sequence[InnerState], entries: Sequence[_TaskEntry],
        step: Callable[[Any, Any, Batch], tuple[Tensor, Any, Any]], loss: Callable[[Any, Batch], Tensor],
        params: Any, opt_state: Any, batches: Callable[[int, str], Batch],
        run: Callable[[Any, Any, int], tuple[list[Tensor], Any]], differentiable: bool,
    ) -> list[tuple[InnerState, UnrollOutput]]:
        """One truncation of ``N = len(states)`` inner runs of one length, however they are stepped:
        the meta-loss terms (capped), divergence, new states and outputs, shared by :meth:`unroll`
        (``N = 1``, the plain per-run step) and :meth:`_unroll_together` (one vmapped step).

        ``step(params, opt_state, batch) -> (losses [M], params, opt_state)`` and ``loss(params,
        batch) -> [M]`` act on all runs at once (``M >= N``: rows past ``N`` are padding);
        ``batches(offset, split)`` is every run's batch at ``step + offset``; ``run(params,
        opt_state, k)`` takes run ``k``'s parameters and optimizer state out of the joint ones."""
        n = len(states)
        steps = min(self.unroll_length, states[0].length - states[0].step)
        initial = [s.initial_loss for s in states]
        with torch.set_grad_enabled(differentiable):
            train_losses, terms = [], []
            for i in range(steps):
                batch = batches(i, "train")
                losses, params, opt_state = step(params, opt_state, batch)
                losses = losses[:n].detach()
                initial = [float(value) if first is None else first for first, value in zip(initial, losses)]
                train_losses.append(losses)
                if self.meta_loss != "heldout_last":
                    terms.append(self._capped(loss(params, batch)[:n], losses.new_tensor(initial)))
            stacked_terms = torch.stack(terms, dim=1) if terms else None  # [N, steps]
            if self.meta_loss == "train_mean":
                meta_losses = stacked_terms.mean(1)
            elif self.meta_loss == "log_train_mean":
                meta_losses = stacked_terms.clamp(min=1e-12).log().mean(1)
            else:
                meta_losses = self._capped(loss(params, batches(steps, "test"))[:n], losses.new_tensor(initial))
        train_losses_t = torch.stack(train_losses, dim=1)  # [N, steps]
        seen = train_losses_t if stacked_terms is None else torch.cat([train_losses_t, stacked_terms.detach()], dim=1)
        results = []
        for k, state in enumerate(states):
            diverged = self.divergence is not None and not bool((seen[k] <= self.divergence * abs(initial[k])).all())
            run_params, run_state = run(params, opt_state, k)
            new_state = replace(state, step=state.step + steps, params=run_params, opt_state=run_state,
                                initial_loss=initial[k])
            results.append((new_state, UnrollOutput(
                slot=state.slot, meta_loss=meta_losses[k], train_losses=train_losses_t[k].clone(), start=state.step,
                task=entries[k].task.name, done=new_state.step >= state.length or diverged)))
        return results

    def _capped(self, loss: Tensor, initial_loss: float | Tensor) -> Tensor:
        """``loss`` capped at ``divergence * |initial_loss|`` (unchanged when ``divergence`` is off)."""
        if self.divergence is None:
            return loss
        return loss.clamp(max=self.divergence * abs(initial_loss))

    def _batch(self, task: Task, step: int, split: str = "train") -> Batch:
        """``task``'s batch (drawn on the CPU) on :attr:`device`."""
        return tuple(x.to(self.device) for x in task.batch(step, split))
