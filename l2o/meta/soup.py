"""Rule soups: one rule holding the mean meta-parameters of several meta-trained rules.

Runs of one recipe that differ only in their seed start from the same initial rule, see different
tasks and end in different places; a single run's rule is one draw from a wide distribution (see
``benchmarks.recipe_spread``). Averaging the meta-parameters of such runs ("model soups", Wortsman
et al., ICML 2022) keeps what they share and averages out what each run's task draws added.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from l2o.rule import UpdateRule

__all__ = ["average_rules"]


def average_rules(rules: Sequence[UpdateRule]) -> UpdateRule:
    """A new rule (a copy of ``rules[0]``) whose floating-point parameters and buffers are the mean of
    the rules' (integer tensors must agree and are kept).

    Raises:
        ValueError: no rules, or rules of different classes or configurations.
    """
    if not rules:
        raise ValueError("average_rules needs at least one rule")
    first = rules[0]
    for rule in rules[1:]:
        if type(rule) is not type(first) or rule.config() != first.config():
            raise ValueError(
                f"cannot average rules of different architectures: {type(first).__name__}{first.config()} and "
                f"{type(rule).__name__}{rule.config()}"
            )
    states = [rule.state_dict() for rule in rules]
    mean = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            mean[key] = torch.stack([state[key].to(value.device) for state in states]).mean(0)
        elif any(not torch.equal(state[key].cpu(), value.cpu()) for state in states):
            raise ValueError(f"cannot average rules whose integer tensor {key!r} differs")
        else:
            mean[key] = value
    soup = copy.deepcopy(first)
    soup.load_state_dict(mean)
    return soup
