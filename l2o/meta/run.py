"""``meta_train``: a meta-training run in a folder, resumable after a kill at any point.

The run folder holds::

    config.yaml                 the configuration of the run
    checkpoint.safetensors      the latest checkpoint (atomic; see l2o.meta.checkpoint)
    metrics.jsonl               one record per meta-step (+ inner curves every log_inner_every)
    meta_training.png           meta-loss and inner curves
    rule/                       the final rule (l2o.hub.save_pretrained: config.json + model.safetensors)
    rule_best/, validation.json with validation.every set: the rule that trained held-out tasks
                                best (the initial one included) and the scores (l2o.meta.validation)

With ``members: K > 1`` the folder holds ``config.yaml``, ``member0`` ... ``member<K-1>`` (run
folders as above, seeds ``seed`` ... ``seed + K - 1``, all from the same initial rule) and ``rule/``,
the average of the members' rules (:func:`l2o.meta.soup.average_rules`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from tqdm.auto import tqdm

from l2o.hub import RULES, save_pretrained
from l2o.meta.build import build_estimator, build_rule
from l2o.meta.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from l2o.meta.config import ConfigError, MetaTrainConfig, config_from_dict, load_config
from l2o.meta.metrics import MetricsLog, read_metrics
from l2o.meta.plot import plot_metrics
from l2o.meta.soup import average_rules
from l2o.meta.trainer import MetaTrainer
from l2o.meta.validation import RuleSelector, validation_tasks
from l2o.rule import UpdateRule

__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "MetaTrainingDiverged", "meta_train"]

CHECKPOINT_NAME = "checkpoint.safetensors"
METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "meta_training.png"
RULE_DIR = "rule"
MEMBER_PREFIX = "member"
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_inner_every", "max_consecutive_failures", "progress", "device")


class MetaTrainingDiverged(RuntimeError):
    """Too many consecutive meta-steps had a non-finite meta-loss or meta-gradient."""


def meta_train(
    config: MetaTrainConfig | dict[str, Any] | str | Path,
    run_dir: str | Path,
    resume: bool = True,
    *,
    rule: UpdateRule | None = None,
    accelerator: Accelerator | None = None,
) -> UpdateRule:
    """Meta-train an update rule and write the run folder (see the module docstring).

    Args:
        config: a config, its dict form or a YAML file.
        run_dir: the run folder (created if needed).
        resume: continue from ``run_dir``'s checkpoint if there is one (exactly where it stopped:
            meta-parameters, Adam, every slot's inner and PES states, RNG); otherwise start afresh.
        rule: train this rule object instead of building ``config.rule`` (its class must be
            registered with :func:`l2o.hub.register_rule` so the result can be saved).
        accelerator: the process group (default: an ``Accelerator`` on ``config.device``, which
            picks up a multi-process launch from the environment). Task slots are split over the
            processes; the rule and the inner problems run on ``accelerator.device``.

    Returns:
        The meta-trained rule (also saved to ``run_dir/rule``); with ``config.members > 1`` the
        average of the members' rules.

    Raises:
        MetaTrainingDiverged: after ``max_consecutive_failures`` non-finite meta-steps in a row;
            the last checkpoint (written after a good step) stays intact.
        l2o.meta.checkpoint.CheckpointError: the checkpoint is unreadable, from another rule, or from
            a run whose config differs in more than ``RESUMABLE_CHANGES``.
    """
    config = _as_config(config, check_rule=rule is None)
    rule = rule if rule is not None else build_rule(config.rule)
    if RULES.get(type(rule).__name__) is not type(rule):
        raise ValueError(f"{type(rule).__qualname__} is not registered; decorate it with @l2o.hub.register_rule()")
    accelerator = _accelerator(config.device, accelerator)
    run_dir = Path(run_dir)
    if config.members == 1:
        return _train(config, run_dir, resume, rule, accelerator)
    members = [  # the same initial rule for every member, so that their average is meaningful
        _train(dataclasses.replace(config, seed=config.seed + k, members=1), run_dir / f"{MEMBER_PREFIX}{k}", resume,
               copy.deepcopy(rule), accelerator)
        for k in range(config.members)
    ]
    soup = average_rules(members)
    if accelerator.is_main_process:
        _write_config(config, run_dir)
        save_pretrained(soup, run_dir / RULE_DIR)
    accelerator.wait_for_everyone()
    return soup


def _train(
    config: MetaTrainConfig, run_dir: Path, resume: bool, rule: UpdateRule, accelerator: Accelerator
) -> UpdateRule:
    """One run (``config.members == 1``) in ``run_dir``."""
    rule.to(accelerator.device)
    main = accelerator.is_main_process
    checkpoint_path = run_dir / CHECKPOINT_NAME

    trainer = MetaTrainer(
        build_estimator(config, rule, accelerator.device),
        n_tasks=config.n_tasks,
        lr=config.outer.lr,
        betas=config.outer.betas,
        weight_decay=config.outer.weight_decay,
        clip_norm=config.outer.clip_norm,
        lr_schedule=config.outer.lr_schedule,
        total_steps=config.steps,
        accelerator=accelerator,
    )
    resumed = resume and checkpoint_path.exists()
    if resumed:
        state = load_checkpoint(checkpoint_path, accelerator.device)
        trainer.load_state_dict(state)
        _check_same_run(state.get("config", {}), config.to_dict(), checkpoint_path)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_config(config, run_dir)
        log = MetricsLog(run_dir / METRICS_NAME, keep_until=trainer.meta_step if resumed else None)
    every = config.validation.every
    selector = None
    if every is not None and main:  # the other processes wait for it at the next collective step
        selector = RuleSelector(run_dir, validation_tasks(config, config.validation.n_tasks), config.validation.steps,
                                accelerator.device)
        selector.start(rule, trainer.meta_step)

    failures, last_saved = 0, trainer.meta_step
    bar = tqdm(total=config.steps, initial=trainer.meta_step, disable=not (config.progress and main), desc="meta")
    while trainer.meta_step < config.steps:
        start = time.perf_counter()
        collect = (trainer.meta_step + 1) % config.log_inner_every == 0
        result = trainer.step(collect_curves=collect)
        failures = failures + 1 if result.skipped else 0
        if main:
            record = {
                "step": result.meta_step,
                "meta_loss": result.meta_loss,
                "grad_norm": result.grad_norm,
                "lr": result.lr,
                "skipped": result.skipped,
                "seconds": time.perf_counter() - start,
            }
            if selector is not None and result.meta_step % every == 0 and not result.skipped:
                record["validation"] = selector.score(rule, result.meta_step)
            log.write({**record, "inner": result.curves} if collect else record)
            bar.update(1)
            bar.set_postfix(meta_loss=f"{result.meta_loss:.4g}", skipped=failures)
        if failures >= config.max_consecutive_failures:
            bar.close()
            raise MetaTrainingDiverged(
                f"{failures} consecutive meta-steps with a non-finite meta-loss or gradient (last: step "
                f"{result.meta_step}); the last good checkpoint (step {last_saved}) is intact in {checkpoint_path}"
            )
        if failures == 0 and trainer.meta_step - last_saved >= config.checkpoint_every:
            _save(trainer, config, checkpoint_path, main)
            last_saved = trainer.meta_step
    bar.close()
    if last_saved != trainer.meta_step:  # decided alike on every process: _save is collective
        _save(trainer, config, checkpoint_path, main)
    if main:
        if selector is not None and trainer.meta_step % every != 0:
            selector.score(rule, trainer.meta_step)
        save_pretrained(rule, run_dir / RULE_DIR)
        plot_metrics(read_metrics(run_dir / METRICS_NAME), run_dir / PLOT_NAME)
    accelerator.wait_for_everyone()
    return rule


def _write_config(config: MetaTrainConfig, run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _save(trainer: MetaTrainer, config: MetaTrainConfig, path: Path, main: bool) -> None:
    state = trainer.state_dict()  # collective: every process contributes its slots
    if main:
        save_checkpoint(path, {**state, "config": config.to_dict()})


def _check_same_run(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume with a config that changes the training itself (run length and logging may change).
    Keys the config gained after the checkpoint was written count with their defaults."""
    saved = {**MetaTrainConfig().to_dict(), **saved}
    changed = sorted(
        k for k in set(saved) | set(current) if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    )
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"{path} belongs to a run with a different config ({details}); use another run folder or resume=False"
        )


def _as_config(config: MetaTrainConfig | dict[str, Any] | str | Path, check_rule: bool) -> MetaTrainConfig:
    if isinstance(config, MetaTrainConfig):
        return config.validate(check_rule=check_rule)
    if isinstance(config, dict):
        return config_from_dict(config, check_rule=check_rule)
    return load_config(config, check_rule=check_rule)


def _accelerator(device: str, accelerator: Accelerator | None) -> Accelerator:
    """``accelerator``, or a new one, checked to be on the device ``config.device`` asks for."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for, but torch sees no CUDA device; use 'cpu' or 'auto'")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    accelerator = accelerator or Accelerator(cpu=not cuda)
    if accelerator.device.type != ("cuda" if cuda else "cpu"):
        raise ConfigError(
            f"device: {device!r} asks for {'a GPU' if cuda else 'the CPU'}, but this process's accelerate "
            f"state was already set up for {accelerator.device} (accelerate keeps one per process); run on "
            "the other device in a new process"
        )
    return accelerator
