"""The vectorized inner step (one vmapped call for N instances) against the per-instance path it replaces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from l2o.functional import learned_step
from l2o.hub import load_rule
from l2o.meta.estimators import PersistentES, TruncatedBPTT, TruncatedES
from l2o.meta.seeding import derive_seed
from l2o.meta.tasks import QuadraticFamily, ReparamFamily
from l2o.meta.tasks.image import MLPFamily
from l2o.meta.truncated_step import TruncatedStep, loss_and_grads
from l2o.meta.truncation import ConstantSchedule, LogUniformSchedule
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
            loss, grads = loss_and_grads(tasks[i], names, p, tasks[i].batch(step), meta_params is not None)
            slow[i] = learned_step(rule, p, grads, s, context, meta_params=meta_params)
            row.append(loss)
        slow_losses.append(torch.stack(row))
    return [torch.stack(fast_losses), fast[1], fast[2]], [torch.stack(slow_losses), slow], names


@pytest.mark.parametrize(("rule_name", "compile"), [("neural-graph-v5", False), ("ff", False), ("momentum", False),
                                                     ("ff", True), ("orthogonal", False), ("orthogonal", True)])
def test_vectorized_steps_match_the_per_instance_path(rule_name: str, compile: bool) -> None:
    """``orthogonal``: the step-size rule with Muon's direction (Newton-Schulz under vmap)."""
    from l2o import StepSizeGraphRule

    rule = {"momentum": MomentumRule, "orthogonal": lambda: StepSizeGraphRule(orthogonal=True)}.get(
        rule_name, lambda: load_rule(rule_name))()
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


def truncated_step(vectorize: bool, meta_loss: str = "train_mean", family=None, rule=None,
                   **options) -> TruncatedStep:
    """Slots over two MLP architectures, episodes of 7 steps in truncations of 3 (the last one of 1)
    and random starting offsets, so that groups of several lengths and architectures form."""
    family = family or MLPFamily(widths=(8, 16), depths=(1,), activations=("tanh",), image_size=4)
    options = {"initial_offset": 6, **options}
    return TruncatedStep(rule or load_rule("neural-graph-v5"), family, ConstantSchedule(7), unroll_length=3,
                         meta_loss=meta_loss, divergence=1e3, vectorize=vectorize, **options)


def assert_same_unrolls(fast: list, slow: list) -> None:
    for (state, out), (ref_state, ref_out) in zip(fast, slow, strict=True):
        assert (state.slot, state.episode, state.step, out.start, out.task, out.done) == (
            ref_state.slot, ref_state.episode, ref_state.step, ref_out.start, ref_out.task, ref_out.done)
        assert state.initial_loss == pytest.approx(ref_state.initial_loss, rel=1e-6)
        torch.testing.assert_close(out.meta_loss, ref_out.meta_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.train_losses, ref_out.train_losses, rtol=1e-5, atol=1e-6)
        for a, b in zip(state.params, ref_state.params, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state.opt_state, ref_state.opt_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("meta_loss", ["train_mean", "log_train_mean", "heldout_last"])
def test_unroll_many_vectorized_matches_unrolling_each_run(meta_loss: str) -> None:
    fast_step, slow_step = truncated_step(True, meta_loss), truncated_step(False, meta_loss)
    rule = fast_step.rule
    theta = {n: p.detach() for n, p in rule.named_parameters()}
    noise = torch.Generator().manual_seed(0)
    metas = [None] + [{n: p + 0.01 * torch.randn(p.shape, generator=noise) for n, p in theta.items()}
                      for _ in range(7)]
    states = [slow_step.init_state(slot) for slot in range(8)]
    architectures = {fast_step.task(s.slot, 0).architecture for s in states}
    lengths = {min(3, s.length - s.step) for s in states}
    assert len(architectures) == 2 and len(lengths) > 1  # several groups, some of them shared
    fast = fast_step.unroll_many(list(zip(states, metas)))
    slow = [slow_step.unroll(state, meta) for state, meta in zip(states, metas)]
    assert_same_unrolls(fast, slow)
    assert not any(p._base is not None and p._base.shape[0] == 8 for s, _ in fast for p in s.params)


def test_compiled_unrolls_pad_groups_and_match_unrolling_each_run() -> None:
    """Three runs of one architecture go through the compiled step padded to four; the FF rule
    compiles faster than v5 (about 30 s)."""
    family = MLPFamily(widths=(8,), depths=(1,), activations=("tanh",), image_size=4)
    fast_step = truncated_step(True, family=family, rule=load_rule("ff"), initial_offset=0, compile=True)
    slow_step = truncated_step(False, family=family, rule=load_rule("ff"), initial_offset=0)
    states = [slow_step.init_state(slot) for slot in range(3)]
    for _ in range(3):  # 3 + 3 + 1 steps: the whole episode, one compile
        fast = fast_step.unroll_many([(s, None) for s in states])
        slow = [slow_step.unroll(s) for s in states]
        assert_same_unrolls(fast, slow)
        states = [s for s, _ in slow]
    with pytest.raises(ValueError, match="set vectorize=True"):
        truncated_step(False, compile=True)


@pytest.mark.filterwarnings("ignore:could not trace the model")  # a quadratic is not a network
def test_tasks_without_a_loss_id_run_one_by_one() -> None:
    family = QuadraticFamily(dim=4)
    fast_step, slow_step = truncated_step(True, family=family), truncated_step(False, family=family)
    states = [slow_step.init_state(slot) for slot in range(3)]
    assert {slow_step.task(s.slot, 0).architecture for s in states} == {None}
    assert_same_unrolls(fast_step.unroll_many([(s, None) for s in states]),
                        [slow_step.unroll(s) for s in states])


def side_by_side(fast, slow, meta_steps: int, slots: int = 6) -> Iterator[tuple]:
    """``(fast estimate, slow estimate)`` of each meta-step of two estimators over the same slots,
    after checking that both give the same meta-losses and leave the slots at the same steps."""
    meta_params = dict(fast.truncated_step.rule.named_parameters())
    fast_states = [fast.init_state(slot) for slot in range(slots)]
    slow_states = [slow.init_state(slot) for slot in range(slots)]
    for meta_step in range(meta_steps):
        fast_estimate, fast_states = fast.estimate(meta_params, fast_states, meta_step)
        slow_estimate, slow_states = slow.estimate(meta_params, slow_states, meta_step)
        torch.testing.assert_close(fast_estimate.losses, slow_estimate.losses, rtol=1e-5, atol=1e-6)
        assert [c["start"] for c in fast_estimate.curves] == [c["start"] for c in slow_estimate.curves]
        yield fast_estimate, slow_estimate


@pytest.mark.parametrize("estimator_cls", [TruncatedES, PersistentES])
def test_vectorized_estimates_match_the_per_slot_estimates(estimator_cls) -> None:
    """Several meta-steps, across episode ends (PES restarts both runs and its accumulator there).

    The momentum rule: the estimate divides the loss difference of the two runs by ``2 sigma^2``,
    and over three steps of a tiny task the trained rules' losses move less with the meta-parameters
    than float32 rounding moves them (``test_unroll_many_vectorized_matches_unrolling_each_run``
    checks each run of a trained rule instead)."""
    fast = estimator_cls(truncated_step(True, rule=MomentumRule()), seed=1, sigma=0.1)
    slow = estimator_cls(truncated_step(False, rule=MomentumRule()), seed=1, sigma=0.1)
    for fast_estimate, slow_estimate in side_by_side(fast, slow, meta_steps=5):
        scale = float(slow_estimate.grads.abs().max())
        torch.testing.assert_close(fast_estimate.grads, slow_estimate.grads, rtol=1e-3, atol=1e-3 * scale)
        for a, b in zip(fast_estimate.curves, slow_estimate.curves, strict=True):
            assert (a["slot"], a["task"], a["start"]) == (b["slot"], b["task"], b["start"])
            assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)


def test_reparameterized_instances_share_a_vmapped_step() -> None:
    """Their scales travel in the batch, so instances with different scales vectorize together."""
    family = ReparamFamily(MLPFamily(widths=(8,), depths=(1,), activations=("tanh",), image_size=4), (0.1, 10.0))
    fast_step, slow_step = truncated_step(True, family=family), truncated_step(False, family=family)
    states = [slow_step.init_state(slot) for slot in range(4)]
    assert len({fast_step.task(s.slot, 0).architecture for s in states}) == 1
    assert len({tuple(slow_step.task(s.slot, 0).task.scales.values()) for s in states}) == 4
    assert_same_unrolls(fast_step.unroll_many([(s, None) for s in states]), [slow_step.unroll(s) for s in states])


def test_slots_of_a_block_train_instances_of_one_task_in_step() -> None:
    family = MLPFamily(widths=(8, 16, 32), depths=(1, 2), activations=("tanh", "relu"), image_size=4)
    shared = TruncatedStep(load_rule("ff"), family, LogUniformSchedule(5, 50), unroll_length=3, initial_offset=40,
                           instances_per_task=4, vectorize=True)
    alone = TruncatedStep(load_rule("ff"), family, LogUniformSchedule(5, 50), unroll_length=3, initial_offset=40,
                          vectorize=True)
    for block in range(2):
        states = [shared.init_state(slot) for slot in range(4 * block, 4 * block + 4)]
        entries = [shared.task(s.slot, 0) for s in states]
        assert len({e.architecture for e in entries}) == 1  # one task draw per block
        assert len({(s.length, s.step) for s in states}) == 1  # in step
        assert len({float(s.params[0].sum()) for s in states}) == 4  # their own weights ...
        assert len({float(e.task.batch(0)[0].sum()) for e in entries}) == 4  # ... and data
    # blocks of one: every slot draws its own task, the same draw as family.sample(seed)
    assert len({alone.task(slot, 0).architecture for slot in range(8)}) > 1
    for slot in range(3):
        own = family.sample(derive_seed(alone.seed, "task", slot, 0))
        drawn = alone.task(slot, 0).task
        assert (drawn.name, drawn.seed) == (own.name, own.seed)
        for a, b in zip(drawn.init_params().values(), own.init_params().values(), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="instances_per_task must be >= 1"):
        TruncatedStep(load_rule("ff"), family, LogUniformSchedule(5, 50), unroll_length=3, instances_per_task=0)


@pytest.mark.parametrize("second_order", [True, False])
def test_vectorized_truncated_backprop_matches_slot_by_slot(second_order: bool) -> None:
    """Each slot's meta-gradient from its own copy of the meta-parameters, one backward pass for all."""
    fast = TruncatedBPTT(truncated_step(True, second_order=second_order))
    slow = TruncatedBPTT(truncated_step(False, second_order=second_order))
    for fast_estimate, slow_estimate in side_by_side(fast, slow, meta_steps=4):
        assert bool(slow_estimate.grads.abs().sum() > 0)
        torch.testing.assert_close(fast_estimate.grads, slow_estimate.grads, rtol=1e-4, atol=1e-6)
