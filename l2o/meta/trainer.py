"""The outer loop: Adam on the meta-parameters from estimates over all task slots.

Distribution (accelerate, any number of processes): the ``n_tasks`` slots are split into
contiguous blocks, one per process; each process unrolls its own inner problems (the inner models
are plain tensors, never DDP-wrapped) and only the per-slot meta-gradients ``[n_local, P]`` and
meta-losses are gathered. Every process then averages the same ``[n_tasks, P]`` tensor in the same
order and takes the same Adam step, so the result is bitwise identical to one process running all
slots, and the meta-parameters stay in sync without a broadcast.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import Tensor

from l2o.meta.checkpoint import CheckpointError
from l2o.meta.estimators import Estimator, meta_parameters, unflatten

__all__ = ["LR_SCHEDULES", "MetaTrainer", "StepResult"]

LR_SCHEDULES = ("constant", "cosine")


@dataclass
class StepResult:
    """The outcome of one meta-step (identical on every process).

    Attributes:
        meta_step: number of meta-steps done, this one included.
        meta_loss: mean meta-loss over all slots.
        grad_norm: norm of the mean meta-gradient before clipping (``nan`` when skipped).
        skipped: the meta-loss or gradient was not finite, so no update was made.
        lr: the outer learning rate of this step.
        curves: inner-loss records of every slot (only when asked for).
    """

    meta_step: int
    meta_loss: float
    grad_norm: float
    skipped: bool
    lr: float
    curves: list[dict[str, Any]] = field(default_factory=list)


class MetaTrainer:
    """Outer optimisation of ``estimator.truncated_step.rule``.

    Args:
        estimator: gradient estimator (bound to the truncated step of the rule being trained).
        n_tasks: task slots over all processes (a multiple of the number of processes).
        lr, betas, weight_decay: outer Adam.
        clip_norm: clip the mean meta-gradient to this norm (``None``: no clipping).
        lr_schedule: ``"constant"`` or ``"cosine"`` (to 0 over ``total_steps``).
        total_steps: meta-steps of the whole run (for the cosine schedule).
        accelerator: the process group (``None``: a single process).
    """

    def __init__(
        self,
        estimator: Estimator,
        *,
        n_tasks: int,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        clip_norm: float | None = 1.0,
        lr_schedule: str = "constant",
        total_steps: int = 1,
        accelerator: Accelerator | None = None,
    ) -> None:
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of {list(LR_SCHEDULES)}")
        world = accelerator.num_processes if accelerator is not None else 1
        rank = accelerator.process_index if accelerator is not None else 0
        if n_tasks % world:
            raise ValueError(f"n_tasks={n_tasks} must be a multiple of the number of processes ({world})")
        self.estimator, self.rule = estimator, estimator.truncated_step.rule
        self.accelerator, self.n_tasks = accelerator, n_tasks
        per_process = n_tasks // world
        self.slots = list(range(rank * per_process, (rank + 1) * per_process))
        self.base_lr, self.clip_norm = lr, clip_norm
        self.lr_schedule, self.total_steps = lr_schedule, max(1, total_steps)
        self.optimizer = torch.optim.Adam(
            meta_parameters(self.rule).values(), lr=lr, betas=betas, weight_decay=weight_decay
        )
        self.worker_states = [estimator.init_state(slot) for slot in self.slots]
        self.meta_step = 0

    def lr(self) -> float:
        """The outer learning rate for the next meta-step."""
        if self.lr_schedule == "cosine":
            return self.base_lr * 0.5 * (1 + math.cos(math.pi * min(self.meta_step / self.total_steps, 1.0)))
        return self.base_lr

    def _gather(self, tensor: Tensor) -> Tensor:
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def step(self, collect_curves: bool = False) -> StepResult:
        """One meta-step: estimate on the local slots, gather, average, clip, Adam (or skip)."""
        meta_params = meta_parameters(self.rule)
        estimate, self.worker_states = self.estimator.estimate(meta_params, self.worker_states, self.meta_step)
        grads, losses = self._gather(estimate.grads), self._gather(estimate.losses)
        grad, meta_loss = grads.mean(0), losses.mean()
        lr = self.lr()
        skipped = not bool(torch.isfinite(grad).all() and torch.isfinite(meta_loss))
        grad_norm = math.nan
        if not skipped:
            for param, g in zip(meta_params.values(), unflatten(grad, meta_params).values()):
                param.grad = g.to(param.dtype).clone()
            max_norm = self.clip_norm if self.clip_norm is not None else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(meta_params.values(), max_norm))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.meta_step += 1
        curves = self._gather_objects(estimate.curves) if collect_curves else []
        return StepResult(self.meta_step, float(meta_loss), grad_norm, skipped, lr, curves)

    def _gather_objects(self, objects: list[Any]) -> list[Any]:
        return objects if self.accelerator is None or self.accelerator.num_processes == 1 else gather_object(objects)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: meta-parameters, Adam, the worker states of all
        slots (gathered from every process; a collective call) and the torch RNG state."""
        return {
            "meta_step": self.meta_step,
            "estimator": self.estimator.name,
            "rule_spec": self._rule_spec(),
            "rule": self.rule.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "worker_states": self._gather_objects(self.worker_states),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (this process takes its own block of slots)."""
        self._check_rule(state["rule_spec"], state["rule"])
        if state["estimator"] != self.estimator.name:
            raise CheckpointError(
                f"the checkpoint holds {state['estimator']!r} worker states; this run uses {self.estimator.name!r}"
            )
        if len(state["worker_states"]) != self.n_tasks:
            raise CheckpointError(
                f"checkpoint has {len(state['worker_states'])} task slots, this run has n_tasks={self.n_tasks}"
            )
        self.rule.load_state_dict(state["rule"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.worker_states = [state["worker_states"][slot] for slot in self.slots]
        self.meta_step = int(state["meta_step"])
        torch.set_rng_state(state["torch_rng"].cpu())

    def _rule_spec(self) -> dict[str, Any]:
        return {"class": type(self.rule).__name__, "config": json.loads(json.dumps(self.rule.config()))}

    def _check_rule(self, spec: dict[str, Any], saved: dict[str, Tensor]) -> None:
        if spec != self._rule_spec():
            raise CheckpointError(
                f"the checkpoint was written for another rule: {spec}; this run trains {self._rule_spec()}"
            )
        current = self.rule.state_dict()
        missing = sorted(set(current) - set(saved))
        unexpected = sorted(set(saved) - set(current))
        reshaped = [
            f"{k}: {tuple(saved[k].shape)} vs {tuple(v.shape)}"
            for k, v in current.items()
            if k in saved and saved[k].shape != v.shape
        ]
        if missing or unexpected or reshaped:
            raise CheckpointError(
                "the checkpoint was written for a different rule architecture "
                f"(missing: {missing}, unexpected: {unexpected}, shape changes (checkpoint vs rule): {reshaped})"
            )
