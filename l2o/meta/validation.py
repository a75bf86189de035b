"""Checkpoint selection on validation tasks: held-out draws of a recipe's own task families.

Meta-training draws its tasks at seeds hashed from the run's seed (:func:`l2o.meta.seeding.derive_seed`);
validation tasks are the config's mixture of families (without its reparameterization augmentation)
at seeds ``VALIDATION_SEED + k``, so they are new instances of the training distribution and never
the evaluation tasks of ``benchmarks/l2o_quality.py``. Why select on them: the meta-loss is a noisy
estimate over short truncations, and earlier recipes ended with rules worse than their
initialisation on full-length runs; a run keeps the rule that trains held-out tasks best over whole
runs (``rule_best/``, see :mod:`l2o.meta.run`).

A rule's **score** is the geometric mean over tasks of its final training loss divided by a
reference's (the run's initial rule): below 1 is better than the initialisation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from l2o.functional import learned_step
from l2o.hub import save_pretrained
from l2o.meta.build import build_family
from l2o.meta.config import MetaTrainConfig
from l2o.meta.tasks.base import Task
from l2o.meta.truncated_step import loss_and_grads
from l2o.rule import UpdateRule

__all__ = ["BEST_RULE_DIR", "VALIDATION_NAME", "VALIDATION_SEED", "RuleSelector", "final_loss", "geomean_ratio",
           "validation_losses", "validation_tasks"]

VALIDATION_SEED = 10**6
"""Validation task ``k`` is drawn at seed ``VALIDATION_SEED + k``."""
BEST_RULE_DIR = "rule_best"
VALIDATION_NAME = "validation.json"


def validation_tasks(config: MetaTrainConfig, count: int, start: int = 0) -> list[Task]:
    """Held-out tasks ``start`` ... ``start + count - 1`` of ``config``'s families (no
    reparameterization: the tasks themselves)."""
    family = build_family(dataclasses.replace(config, reparam_scale=None))
    return [family.sample(VALIDATION_SEED + k) for k in range(start, start + count)]


def final_loss(rule: UpdateRule, task: Task, steps: int, smooth: int, lr: float = 1.0,
               device: torch.device | str = "cpu") -> float:
    """Train ``task`` from its initial parameters for ``steps`` steps of ``rule`` (functional
    :func:`~l2o.functional.learned_step`, the update ``NeuralGraphOpt`` makes at ``lr``); the mean
    training loss of the last ``smooth`` steps, ``inf`` once a loss is not finite."""
    names = [n for n, _ in task.model.named_parameters()]
    task.model.to(device)
    params = [p.to(device) for p in task.init_params().values()]
    context = rule.context_for(params, task.model, task.example_inputs())
    state = rule.init_state(params)
    losses = []
    with torch.no_grad():
        for step in range(steps):
            batch = tuple(x.to(device) for x in task.batch(step))
            loss, grads = loss_and_grads(task, names, params, batch, create_graph=False)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                return math.inf
            params, state = learned_step(rule, params, grads, state, context, lr=lr)
    tail = losses[-smooth:]
    return sum(tail) / len(tail)


def validation_losses(rule: UpdateRule, tasks: Sequence[Task], steps: int, smooth: int | None = None,
                      device: torch.device | str = "cpu") -> list[float]:
    """:func:`final_loss` of ``rule`` on every task (``smooth``: default a tenth of ``steps``)."""
    smooth = smooth or max(1, steps // 10)
    return [final_loss(rule, task, steps, smooth, device=device) for task in tasks]


def geomean_ratio(losses: Sequence[float], reference: Sequence[float]) -> float:
    """Geometric mean of ``losses[k] / reference[k]``; ``inf`` if any ratio is not positive and finite."""
    ratios = [a / b if b > 0 else math.inf for a, b in zip(losses, reference, strict=True)]
    if not ratios or not all(0 < x < math.inf for x in ratios):
        return math.inf
    return math.exp(sum(math.log(x) for x in ratios) / len(ratios))


class RuleSelector:
    """Keeps the best rule of a run on validation tasks: ``run_dir/rule_best/`` (the initial rule
    until a later one scores below 1) and ``run_dir/validation.json`` (the reference losses, the
    best score and its meta-step, and every score so far), both rewritten when they change, so a
    resumed run continues the selection.

    Args:
        run_dir: the run folder.
        tasks: the validation tasks (:func:`validation_tasks`).
        steps: inner steps per validation run.
        device: where the validation runs train.
    """

    def __init__(self, run_dir: str | Path, tasks: Sequence[Task], steps: int,
                 device: torch.device | str = "cpu") -> None:
        self.run_dir, self.tasks, self.steps, self.device = Path(run_dir), list(tasks), steps, device
        path = self.run_dir / VALIDATION_NAME
        self.record: dict[str, Any] | None = json.loads(path.read_text()) if path.exists() else None

    def start(self, rule: UpdateRule, meta_step: int) -> None:
        """Score the initial rule (the reference, score 1) unless the folder already holds a
        selection; on resume, forget the scores of meta-steps after ``meta_step`` (they will be redone)."""
        if self.record is not None:
            self.record["history"] = [h for h in self.record["history"] if h[0] <= meta_step]
            self._write()
            return
        reference = validation_losses(rule, self.tasks, self.steps, device=self.device)
        if not all(0 < x < math.inf for x in reference):
            raise ValueError(f"the initial rule does not train every validation task to a finite, positive loss "
                             f"({dict(zip((t.name for t in self.tasks), reference))}): no reference to select against")
        self.record = {"tasks": [t.name for t in self.tasks], "steps": self.steps, "reference": reference,
                       "best": 1.0, "best_step": meta_step, "history": [[meta_step, 1.0]]}
        save_pretrained(rule, self.run_dir / BEST_RULE_DIR)
        self._write()

    def score(self, rule: UpdateRule, meta_step: int) -> float:
        """Score ``rule`` (:func:`geomean_ratio` of its losses to the reference); keep it if it is the best."""
        if self.record is None:
            raise RuntimeError("call start() first")
        value = geomean_ratio(validation_losses(rule, self.tasks, self.steps, device=self.device),
                              self.record["reference"])
        self.record["history"].append([meta_step, value if math.isfinite(value) else None])
        if value < self.record["best"]:
            save_pretrained(rule, self.run_dir / BEST_RULE_DIR)
            self.record["best"], self.record["best_step"] = value, meta_step
        self._write()
        return value

    def _write(self) -> None:
        path = self.run_dir / VALIDATION_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=1))
        os.replace(tmp, path)
