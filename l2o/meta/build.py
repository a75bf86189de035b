"""Config -> objects: the rule, the task family, the truncated step and the estimator."""

from __future__ import annotations

import torch

from l2o.hub import load_rule
from l2o.meta.config import ConfigError, MetaTrainConfig, RuleConfig, resolve_rule_class
from l2o.meta.estimators import ESTIMATORS, Estimator, TruncatedBPTT
from l2o.meta.seeding import derive_seed
from l2o.meta.tasks import FAMILIES, MixtureFamily, ReparamFamily, TaskFamily
from l2o.meta.truncated_step import TruncatedStep
from l2o.meta.truncation import ConstantSchedule, LogUniformSchedule, TruncationSchedule
from l2o.rule import UpdateRule

__all__ = ["build_estimator", "build_family", "build_rule", "build_schedule"]


def build_rule(config: RuleConfig) -> UpdateRule:
    """Instantiate the configured update rule: from ``config.init``'s meta-parameters if given,
    with only the meta-parameters named by ``config.train`` left trainable (``requires_grad``)."""
    rule_class = resolve_rule_class(config.name)
    if config.init is None:
        rule = rule_class(**config.options)
    else:
        source = load_rule(config.init)
        if type(source) is not rule_class:
            raise ConfigError(f"rule.init {config.init!r} is a {type(source).__name__}, not a {rule_class.__name__} "
                              f"(rule.name {config.name!r})")
        rule = rule_class(**{**source.config(), **config.options})
        rule.load_state_dict(source.state_dict())
    if config.train is not None:
        names = [name for name, _ in rule.named_parameters()]
        unknown = [prefix for prefix in config.train if not any(_named_by(n, prefix) for n in names)]
        if unknown:
            raise ConfigError(f"rule.train: {unknown} name no meta-parameter of {rule_class.__name__}; "
                              f"its parts are {sorted({n.split('.')[0] for n in names})}")
        for name, param in rule.named_parameters():
            param.requires_grad_(any(_named_by(name, prefix) for prefix in config.train))
    return rule


def _named_by(name: str, prefix: str) -> bool:
    """Whether meta-parameter ``name`` is ``prefix`` or lies under it (``gnn`` names ``gnn.0.weight``)."""
    return name == prefix or name.startswith(prefix + ".")


def build_family(config: MetaTrainConfig) -> TaskFamily:
    """The mixture of the configured task families, reparameterized if ``reparam_scale`` is set."""
    families = [FAMILIES[t.family](**t.options) for t in config.tasks]
    family: TaskFamily = MixtureFamily(families, [t.weight for t in config.tasks])
    if config.reparam_scale is not None:
        family = ReparamFamily(family, config.reparam_scale)
    return family


def build_schedule(config: MetaTrainConfig) -> TruncationSchedule:
    """The configured truncation schedule."""
    t = config.truncation
    if t.schedule == "constant":
        return ConstantSchedule(t.length)
    return LogUniformSchedule(t.min_length, t.max_length)


def build_estimator(config: MetaTrainConfig, rule: UpdateRule, device: torch.device | str = "cpu") -> Estimator:
    """The configured estimator over a truncated step of ``rule`` (inner problems on ``device``)."""
    truncated_step = TruncatedStep(
        rule,
        build_family(config),
        build_schedule(config),
        unroll_length=config.truncation.unroll_length,
        meta_loss=config.inner.meta_loss,
        second_order=config.inner.second_order,
        lr=config.inner.lr,
        weight_decay=config.inner.weight_decay,
        initial_offset=config.truncation.initial_offset,
        divergence=config.inner.divergence,
        vectorize=config.inner.vectorize,
        instances_per_task=config.instances_per_task,
        compile=config.inner.compile,
        seed=derive_seed(config.seed, "inner"),
        device=device,
    )
    cls = ESTIMATORS[config.estimator.name]
    seed = derive_seed(config.seed, "estimator")
    if cls is TruncatedBPTT:
        return cls(truncated_step, seed)
    return cls(truncated_step, seed, sigma=config.estimator.sigma)
