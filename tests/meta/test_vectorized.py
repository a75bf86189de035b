"""The vectorized inner step (one vmapped call for N instances) against the per-instance path it replaces."""

from __future__ import annotations

import pytest
import torch

from l2o.functional import learned_step
from l2o.hub import load_rule
from l2o.meta.tasks.image import MLPFamily
from l2o.meta.truncated_step import _loss_and_grads
from l2o.meta.vectorized import VectorizedStep, stack_batches, stack_instances, stack_states, unstack
from tests.meta.rules import MomentumRule

N, STEPS = 4, 3


def instances(n: int = N) -> list:
    family = MLPFamily(widths=(8,), depths=(1,), activations=("tanh",), image_size=4)
    return [family.sample(seed) for seed in range(n)]


def unroll(rule, tasks, meta_params=None, compile=False) -> tuple[list, list, list]:
    """Both paths over ``STEPS`` steps: (vectorized losses, params, state), (reference ...)."""
    names, params = stack_instances(tasks)
    context = rule.context_for([p[0] for p in params], tasks[0].model, None)
    step_all = VectorizedStep(rule, tasks[0], names, context, compile=compile)
    states = [rule.init_state([p[i] for p in params]) for i in range(len(tasks))]
    fast = (None, params, stack_states(states))
    slow = [([p[i] for p in params], states[i]) for i in range(len(tasks))]
    fast_losses, slow_losses = [], []
    for step in range(STEPS):
        losses, new_params, new_state = step_all(fast[1], fast[2], stack_batches(tasks, step), meta_params)
        fast = (losses, new_params, new_state)
        fast_losses.append(losses)
        row = []
        for i, (p, s) in enumerate(slow):
            loss, grads = _loss_and_grads(tasks[i], names, p, tasks[i].batch(step), meta_params is not None)
            slow[i] = learned_step(rule, p, grads, s, context, meta_params=meta_params)
            row.append(loss)
        slow_losses.append(torch.stack(row))
    return [torch.stack(fast_losses), fast[1], fast[2]], [torch.stack(slow_losses), slow], names


@pytest.mark.parametrize(("rule_name", "compile"), [("neural-graph-v5", False), ("ff", False), ("momentum", False),
                                                     ("ff", True)])
def test_vectorized_steps_match_the_per_instance_path(rule_name: str, compile: bool) -> None:
    rule = MomentumRule() if rule_name == "momentum" else load_rule(rule_name)
    tasks = instances()
    with torch.no_grad():
        (losses, params, state), (ref_losses, ref), _ = unroll(rule, tasks, compile=compile)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for i, (ref_params, ref_state) in enumerate(ref):
        for a, b in zip(unstack(params, i), ref_params):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(unstack(state, i), ref_state, rtol=1e-5, atol=1e-6)


def test_meta_gradients_match_the_per_instance_path() -> None:
    """Truncated backprop through the vectorized unroll (second order: the inner gradients stay on the graph)."""
    rule = load_rule("neural-graph-v5")
    meta = {n: p.detach().clone().requires_grad_() for n, p in rule.named_parameters()}
    (losses, _, _), (ref_losses, _), _ = unroll(rule, instances(), meta)
    fast = torch.autograd.grad(losses[1:].mean(), list(meta.values()), allow_unused=True)
    slow = torch.autograd.grad(ref_losses[1:].mean(), list(meta.values()), allow_unused=True)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in slow)
    for name, a, b in zip(meta, fast, slow):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7, msg=name)


def test_instances_of_other_architectures_are_refused() -> None:
    family = MLPFamily(widths=(8, 16), depths=(1,), activations=("tanh",), image_size=4)
    tasks = [family.sample(seed) for seed in range(12)]
    shapes = {tuple(t.init_params()["1.weight"].shape) for t in tasks}
    assert len(shapes) > 1
    with pytest.raises(ValueError, match="does not share the architecture of instance 0"):
        stack_instances(tasks)
    with pytest.raises(ValueError, match="at least one"):
        stack_instances([])
