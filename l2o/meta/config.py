"""Meta-training configuration: dataclasses loadable from YAML, validated with clear errors.

YAML layout (every key optional except where noted)::

    rule: {name: ff, hidden: 32}          # a registered name or "module:Class"; other keys: options
    # or start from a shipped rule and meta-train only some of its parts:
    #   rule: {name: neural-graph-stepsize, init: neural-graph-v7, train: [node_in, gnn, scale_out]}
    tasks:                                # task families, drawn with probability ~ weight
      - {family: mlp, dataset: digits, widths: [16, 32], weight: 2}
      - {family: inr, dataset: digits}
    reparam_scale: [0.1, 10.0]            # weight-reparameterization augmentation (null: off)
    estimator: {name: pes, sigma: 0.01}
    truncation: {schedule: log_uniform, min_length: 100, max_length: 1000, unroll_length: 20, initial_offset: 100}
    inner: {lr: 1.0, weight_decay: 0.0, meta_loss: train_mean, second_order: true}
    outer: {lr: 3.0e-4, clip_norm: 1.0, lr_schedule: cosine}
    validation: {every: 100, n_tasks: 6, steps: 300}   # keep the best rule on held-out tasks (null: off)
    n_tasks: 8
    steps: 1000
    device: cpu                           # or cuda (each process's GPU), or auto
    members: 1                            # > 1: average the rules of that many runs (seeds seed, seed + 1, ...)
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from l2o.hub import RULES
from l2o.meta.estimators import ESTIMATORS
from l2o.meta.tasks import FAMILIES
from l2o.meta.trainer import LR_SCHEDULES
from l2o.meta.truncated_step import META_LOSSES
from l2o.meta.truncation import SCHEDULES

DEVICES = ("cpu", "cuda", "auto")

__all__ = [
    "DEVICES",
    "ConfigError",
    "EstimatorConfig",
    "InnerConfig",
    "MetaTrainConfig",
    "OuterConfig",
    "RuleConfig",
    "TaskConfig",
    "TruncationConfig",
    "ValidationConfig",
    "config_from_dict",
    "load_config",
    "resolve_rule_class",
]


class ConfigError(ValueError):
    """An invalid meta-training configuration."""


@dataclass
class RuleConfig:
    """The update rule: ``name`` is a registered rule (:data:`l2o.hub.RULES`, e.g. ``ff``) or
    ``"module:Class"``; ``options`` go to its constructor.

    ``init``: a shipped rule's name or a rule folder to start from (its meta-parameters, and its
    options under ``options``); it must be a ``name`` rule. ``train``: the meta-parameters to
    train, as prefixes of their names (``None``: all); the others keep their starting values.
    Why: a recipe that refines one part of a shipped rule (e.g. the per-neuron step sizes on top
    of a learned schedule) is then a config, not a script."""

    name: str = "ff"
    options: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    train: list[str] | None = None


@dataclass
class TaskConfig:
    """One task family (a key of :data:`l2o.meta.tasks.FAMILIES`), its sampling weight and options."""

    family: str = "mlp"
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EstimatorConfig:
    """``name``: ``tbptt``, ``es`` or ``pes``; ``sigma``: perturbation std of ES and PES."""

    name: str = "pes"
    sigma: float = 0.01


@dataclass
class TruncationConfig:
    """Episode lengths (``constant``: ``length``; ``log_uniform``: in ``[min_length, max_length]``),
    inner steps per truncation and the maximal random initial offset."""

    schedule: str = "constant"
    length: int = 100
    min_length: int = 100
    max_length: int = 1000
    unroll_length: int = 10
    initial_offset: int = 0


@dataclass
class InnerConfig:
    """Inner training: ``lr`` and ``weight_decay`` of ``learned_step``; the meta-loss kind; whether
    truncated backprop differentiates through the inner gradients (``second_order``) or treats them
    as constants (first order, as Andrychowicz et al. 2016); ``divergence`` (``null``: off): cap
    meta-loss terms at that many times the episode's first loss and end episodes that exceed it;
    ``vectorize``: run the inner runs of slots that share an architecture as one vmapped step;
    ``compile``: through ``torch.compile`` (ES and PES only; see
    :class:`~l2o.meta.truncated_step.TruncatedStep`)."""

    lr: float = 1.0
    weight_decay: float = 0.0
    meta_loss: str = "train_mean"
    second_order: bool = True
    divergence: float | None = None
    vectorize: bool = False
    compile: bool = False


@dataclass
class OuterConfig:
    """Outer Adam, gradient clipping (``null``: none) and learning-rate schedule."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    lr_schedule: str = "constant"


@dataclass
class ValidationConfig:
    """Checkpoint selection (:mod:`l2o.meta.validation`): every ``every`` meta-steps (``null``: off)
    the rule trains ``n_tasks`` held-out tasks of the recipe's families for ``steps`` steps each, and
    the best rule so far (the initial one included) is kept in the run's ``rule_best/``."""

    every: int | None = None
    n_tasks: int = 6
    steps: int = 300


@dataclass
class MetaTrainConfig:
    """Everything :func:`l2o.meta.meta_train` needs.

    Attributes:
        n_tasks: task slots per meta-step over all processes.
        instances_per_task: slots come in blocks of this many that train instances of one task
            draw in step (one architecture, their own weights and data), so that ``inner.vectorize``
            finds groups; see :class:`~l2o.meta.truncated_step.TruncatedStep`.
        steps: meta-steps of the run.
        checkpoint_every: write a checkpoint at least this often (in meta-steps).
        log_inner_every: log the inner loss curves of every slot this often.
        max_consecutive_failures: stop after this many non-finite meta-steps in a row.
        progress: show a progress bar.
        device: where the inner problems and the rule run: ``"cpu"``, ``"cuda"`` (each process's
            GPU under a multi-GPU launch) or ``"auto"`` (``"cuda"`` when a GPU is visible).
        members: independent runs (seeds ``seed`` ... ``seed + members - 1``, one initial rule)
            whose rules are averaged into the final one (a soup; lowers the run-to-run spread).
    """

    rule: RuleConfig = field(default_factory=RuleConfig)
    tasks: list[TaskConfig] = field(default_factory=lambda: [TaskConfig()])
    reparam_scale: tuple[float, float] | None = None
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    truncation: TruncationConfig = field(default_factory=TruncationConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    n_tasks: int = 8
    instances_per_task: int = 1
    steps: int = 100
    seed: int = 0
    checkpoint_every: int = 10
    log_inner_every: int = 10
    max_consecutive_failures: int = 5
    progress: bool = True
    device: str = "cpu"
    members: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form (inverse of :func:`config_from_dict`)."""
        out = dataclasses.asdict(self)
        out["rule"] = {"name": self.rule.name, **self.rule.options}
        out["rule"].update({k: getattr(self.rule, k) for k in ("init", "train") if getattr(self.rule, k) is not None})
        out["tasks"] = [{"family": t.family, "weight": t.weight, **t.options} for t in self.tasks]
        return _plain(out)

    def validate(self, check_rule: bool = True) -> MetaTrainConfig:
        """Check names, option keys and ranges; raise :class:`ConfigError` listing valid choices.

        ``check_rule=False`` skips the rule section (for a rule object passed in directly).
        """
        _choice("estimator.name", self.estimator.name, ESTIMATORS)
        _choice("truncation.schedule", self.truncation.schedule, SCHEDULES)
        _choice("inner.meta_loss", self.inner.meta_loss, META_LOSSES)
        _choice("outer.lr_schedule", self.outer.lr_schedule, LR_SCHEDULES)
        _choice("device", self.device, DEVICES)
        if not self.tasks:
            raise ConfigError("tasks: give at least one task family")
        for i, task in enumerate(self.tasks):
            _choice(f"tasks[{i}].family", task.family, FAMILIES)
            _check_options(f"tasks[{i}] ({task.family})", FAMILIES[task.family], task.options)
            if task.weight <= 0:
                raise ConfigError(f"tasks[{i}].weight must be positive, got {task.weight}")
        if check_rule:
            _check_options(f"rule ({self.rule.name})", resolve_rule_class(self.rule.name), self.rule.options)
        for name in ("n_tasks", "instances_per_task", "steps", "checkpoint_every", "log_inner_every",
                     "max_consecutive_failures", "members"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_tasks", "steps"):
            if getattr(self.validation, name) < 1:
                raise ConfigError(f"validation.{name} must be >= 1, got {getattr(self.validation, name)}")
        if self.validation.every is not None and self.validation.every < 1:
            raise ConfigError(f"validation.every must be >= 1 or null, got {self.validation.every}")
        if self.truncation.unroll_length < 1:
            raise ConfigError(f"truncation.unroll_length must be >= 1, got {self.truncation.unroll_length}")
        if self.inner.compile and self.estimator.name == "tbptt":
            raise ConfigError("inner.compile applies to the forward-only estimators (es, pes), not tbptt")
        if self.inner.compile and not self.inner.vectorize:
            raise ConfigError("inner.compile compiles the vectorized unrolls: set inner.vectorize too")
        return self


def resolve_rule_class(name: str) -> type:
    """The rule class for a registered name (:data:`l2o.hub.RULES`) or a ``"module:Class"`` path."""
    if name in RULES:
        return RULES[name]
    if ":" not in name:
        raise ConfigError(f"unknown rule {name!r}; choose one of {sorted(RULES)} or give 'module:Class'")
    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"cannot import rule {name!r}: {error}") from error


def load_config(path: str | Path, check_rule: bool = True) -> MetaTrainConfig:
    """Read and validate a YAML config file (``check_rule``: see :meth:`MetaTrainConfig.validate`)."""
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return config_from_dict(data, check_rule)


def config_from_dict(data: dict[str, Any], check_rule: bool = True) -> MetaTrainConfig:
    """Build and validate a config from its dict form (as in YAML)."""
    data = dict(data)
    rule = data.pop("rule", None) or {}
    rule = {"name": rule} if isinstance(rule, str) else rule
    if not isinstance(rule, dict):
        raise ConfigError(f"rule must be a rule name or a mapping, got {rule!r}")
    rule = dict(rule)
    tasks = data.pop("tasks", None)
    config = _build(MetaTrainConfig, data, "")
    init, train = rule.pop("init", None), rule.pop("train", None)
    if init is not None and not isinstance(init, str):
        raise ConfigError(f"rule.init must be a rule name or folder, got {init!r}")
    if train is not None and (not isinstance(train, list) or not all(isinstance(t, str) for t in train) or not train):
        raise ConfigError(f"rule.train must be a non-empty list of meta-parameter name prefixes, got {train!r}")
    config.rule = RuleConfig(name=rule.pop("name", RuleConfig.name), options=rule, init=init, train=train)
    if tasks is not None:
        if not isinstance(tasks, list):
            raise ConfigError(f"tasks must be a list, got {type(tasks).__name__}")
        config.tasks = [_task(entry, i) for i, entry in enumerate(tasks)]
    return config.validate(check_rule)


def _task(entry: Any, index: int) -> TaskConfig:
    if isinstance(entry, str):
        entry = {"family": entry}
    if not isinstance(entry, dict) or "family" not in entry:
        raise ConfigError(f"tasks[{index}] must be a family name or a mapping with a 'family' key")
    options = dict(entry)
    weight = _coerce(options.pop("weight", 1.0), float, f"tasks[{index}].weight")
    return TaskConfig(family=options.pop("family"), weight=weight, options=options)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name not in ("rule", "tasks", "options")}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or 'config'}; valid keys: {sorted(fields)}")
    values = {}
    for key, value in data.items():
        hint = hints[key]
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value or {}, path)
        else:
            values[key] = _coerce(value, hint, path)
    return cls(**values)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
        return _coerce(value, hint, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, path) for v, a in zip(value, args))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{path} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _choice(path: str, value: str, valid: Any) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {path} {value!r}; choose one of {sorted(valid)}")


def _check_options(where: str, cls: type, options: dict[str, Any]) -> None:
    valid = _constructor_options(cls)
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {where}; valid options: {sorted(valid)}")


def _constructor_options(cls: type) -> set[str]:
    """Keyword arguments accepted by ``cls(...)``, following ``**options`` up the class hierarchy."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
