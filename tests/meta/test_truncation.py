"""Truncation schedules, random initial offsets and the truncated step's episode bookkeeping."""

from __future__ import annotations

import pytest
import torch

from l2o.meta.tasks import QuadraticFamily
from l2o.meta.truncated_step import TruncatedStep
from l2o.meta.truncation import ConstantSchedule, LogUniformSchedule
from tests.meta.rules import LogLRRule, MomentumRule


def test_log_uniform_lengths_cover_the_range_on_a_log_scale():
    schedule = LogUniformSchedule(10, 1000)
    lengths = torch.tensor([schedule.sample(seed) for seed in range(2000)], dtype=torch.float64)
    assert lengths.min() >= 10 and lengths.max() <= 1000
    assert schedule.sample(7) == schedule.sample(7)
    # log-uniform: a third of the mass in each decade-ish third of [log 10, log 1000]
    below_100 = (lengths < 100).double().mean().item()
    assert 0.45 < below_100 < 0.55
    assert ConstantSchedule(5).sample(3) == 5
    with pytest.raises(ValueError):
        LogUniformSchedule(10, 5)


def test_initial_offsets_are_random_bounded_and_only_for_the_first_episode():
    step = TruncatedStep(LogLRRule(), QuadraticFamily(dim=2), ConstantSchedule(20), unroll_length=5, initial_offset=8)
    offsets = [step.init_state(slot).step for slot in range(40)]
    assert min(offsets) >= 0 and max(offsets) <= 8 and len(set(offsets)) > 4
    assert all(step.init_state(slot, episode=1).step == 0 for slot in range(5))
    short = TruncatedStep(LogLRRule(), QuadraticFamily(dim=2), ConstantSchedule(3), unroll_length=5, initial_offset=8)
    assert max(short.init_state(slot).step for slot in range(40)) <= 2  # never past the episode end


def test_truncations_end_exactly_at_the_episode_end():
    step = TruncatedStep(MomentumRule(), QuadraticFamily(dim=2), ConstantSchedule(7), unroll_length=3)
    state = step.init_state(0)
    sizes, done = [], False
    while not done:
        state, out = step.unroll(state)
        sizes.append(len(out.train_losses))
        done = out.done
    assert sizes == [3, 3, 1] and state.step == 7
    assert state.opt_state["t"].item() == 7  # the rule's state was carried through
    with pytest.raises(ValueError, match="next_episode"):
        step.unroll(state)
    fresh = step.next_episode(state)
    assert (fresh.episode, fresh.step) == (1, 0)
    assert step.task(0, 1).task.seed != step.task(0, 0).task.seed


def test_meta_loss_kinds():
    with pytest.raises(ValueError, match="train_mean"):
        TruncatedStep(LogLRRule(), QuadraticFamily(), ConstantSchedule(3), unroll_length=1, meta_loss="last")
    family = QuadraticFamily(dim=3, noise_std=0.5)
    held = TruncatedStep(LogLRRule(), family, ConstantSchedule(6), unroll_length=3, meta_loss="heldout_last")
    train = TruncatedStep(LogLRRule(), family, ConstantSchedule(6), unroll_length=3)
    new_state, out = held.unroll(held.init_state(0))
    task = held.task(0, 0)
    expected = task.task.loss(dict(zip(task.names, new_state.params)), task.task.batch(3, "test"))
    assert torch.equal(out.meta_loss, expected)
    assert not torch.equal(out.meta_loss, train.unroll(train.init_state(0))[1].meta_loss)
    # log_train_mean: the mean of the per-step logs (of a one-step truncation: the log of train_mean)
    per_step = [TruncatedStep(LogLRRule(), family, ConstantSchedule(6), unroll_length=1, meta_loss=kind)
                for kind in ("train_mean", "log_train_mean")]
    plain, logged = (s.unroll(s.init_state(0))[1].meta_loss for s in per_step)
    torch.testing.assert_close(logged, plain.log())
    logged_3 = TruncatedStep(LogLRRule(), family, ConstantSchedule(6), unroll_length=3, meta_loss="log_train_mean")
    train_3 = train.unroll(train.init_state(0))[1].meta_loss
    assert logged_3.unroll(logged_3.init_state(0))[1].meta_loss < train_3.log()  # Jensen: losses differ by step


def test_diverging_episodes_are_capped_and_ended():
    """SGD with a step far above 2 / curvature blows up the quadratic: with ``divergence`` the
    meta-loss terms stop at the bound (no meta-gradient from them) and the episode ends early."""
    family = QuadraticFamily(dim=2)
    free = TruncatedStep(LogLRRule(lr=30.0), family, ConstantSchedule(40), unroll_length=5)
    guarded = TruncatedStep(LogLRRule(lr=30.0), family, ConstantSchedule(40), unroll_length=5, divergence=10.0)
    _, out = free.unroll(free.init_state(0))
    assert not out.done and out.meta_loss > 1e3 * out.train_losses[0]
    state = guarded.init_state(0)
    state, out = guarded.unroll(state, differentiable=True)
    bound = 10.0 * out.train_losses[0].item()
    assert state.initial_loss == pytest.approx(out.train_losses[0].item())
    assert out.done and state.step == 5 < state.length
    assert out.meta_loss.item() == pytest.approx(bound)  # every term after the first step is capped
    (grad,) = torch.autograd.grad(out.meta_loss, guarded.rule.log_lr)
    assert torch.isfinite(grad)
    calm = TruncatedStep(LogLRRule(lr=0.01), family, ConstantSchedule(40), unroll_length=5, divergence=10.0)
    assert not calm.unroll(calm.init_state(0))[1].done
    with pytest.raises(ValueError, match="divergence"):
        TruncatedStep(LogLRRule(), family, ConstantSchedule(3), unroll_length=1, divergence=0.5)
