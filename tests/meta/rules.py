"""Tiny update rules for the meta-training tests (registered so that runs can save them)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from l2o.hub import register_rule
from l2o.rule import UpdateRule


@register_rule()
class LogLRRule(UpdateRule):
    """SGD with a learned step size: ``update = exp(log_lr) * g``; one meta-parameter ``log_lr``."""

    def __init__(self, lr: float = 0.1, dtype: str = "float32") -> None:
        super().__init__()
        self._config = {"lr": lr, "dtype": dtype}
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr), dtype=getattr(torch, dtype)))

    def init_state(self, params: list[Tensor]) -> dict[str, Any]:
        return {}

    def forward(
        self, params: list[Tensor], grads: list[Tensor], state: dict[str, Any], context: Any = None
    ) -> tuple[list[Tensor], dict[str, Any]]:
        return [self.log_lr.exp() * g for g in grads], state

    def config(self) -> dict[str, Any]:
        return dict(self._config)


@register_rule()
class MomentumRule(UpdateRule):
    """Heavy ball with learned log step size and momentum logit; state ``{"m": [...], "t": []}``."""

    def __init__(self, lr: float = 0.1, momentum: float = 0.5) -> None:
        super().__init__()
        self._config = {"lr": lr, "momentum": momentum}
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr)))
        self.momentum_logit = nn.Parameter(torch.tensor(math.log(momentum / (1 - momentum))))

    def init_state(self, params: list[Tensor]) -> dict[str, Any]:
        return {"m": [torch.zeros_like(p) for p in params], "t": torch.zeros(())}

    def forward(
        self, params: list[Tensor], grads: list[Tensor], state: dict[str, Any], context: Any = None
    ) -> tuple[list[Tensor], dict[str, Any]]:
        beta = torch.sigmoid(self.momentum_logit)
        m = [beta * m + g for m, g in zip(state["m"], grads)]
        return [self.log_lr.exp() * v for v in m], {"m": m, "t": state["t"] + 1}

    def config(self) -> dict[str, Any]:
        return dict(self._config)


@register_rule()
class PoisonRule(LogLRRule):
    """:class:`LogLRRule` whose updates are NaN while the class flag ``poisoned`` is set (not state)."""

    poisoned = False

    def forward(
        self, params: list[Tensor], grads: list[Tensor], state: dict[str, Any], context: Any = None
    ) -> tuple[list[Tensor], dict[str, Any]]:
        updates, state = super().forward(params, grads, state, context)
        return ([u * math.nan for u in updates] if self.poisoned else updates), state
