"""Estimators against the exact gradient of a full unroll on quadratics with a learned step size.

Inner problem: ``f(x) = 0.5 sum_i a_i x_i^2`` trained by ``x <- x - exp(log_lr) * grad``, so
``x_t = (1 - eta a)^t x_0`` and every meta-loss has a closed form in ``eta`` (differentiated here by
autograd on the formula, independently of the unroll machinery).
"""

from __future__ import annotations

import math

import pytest
import torch

from l2o.meta.estimators import PersistentES, TruncatedBPTT, TruncatedES
from l2o.meta.tasks import QuadraticFamily
from l2o.meta.truncated_step import TruncatedStep
from l2o.meta.truncation import ConstantSchedule
from tests.meta.rules import LogLRRule, MomentumRule

FAMILY = QuadraticFamily(dim=4, curvature_range=(0.5, 2.0), dtype="float64")


def closed_form_grad(task, lr: float, steps: int, meta_loss: str) -> float:
    """d(meta-loss of a ``steps``-step episode)/d(log lr) from the closed form."""
    a, x0 = task.model.a, task.model.x.detach()
    log_lr = torch.tensor(math.log(lr), dtype=torch.float64, requires_grad=True)
    r = 1 - log_lr.exp() * a
    if meta_loss == "train_mean":  # mean over steps of the loss after each update
        t = torch.arange(1, steps + 1, dtype=torch.float64)[:, None]
        value = (0.5 * a * x0**2 * r ** (2 * t)).sum(1).mean()
    else:  # loss after the last step
        value = (0.5 * a * x0**2 * r ** (2 * steps)).sum()
    (grad,) = torch.autograd.grad(value, log_lr)
    return float(grad)


def sum_over_truncations(estimator, n_slots: int, truncations: int, rule) -> torch.Tensor:
    """Per-slot sum of the estimates over ``truncations`` consecutive truncations: ``[n_slots]``."""
    meta_params = dict(rule.named_parameters())
    states = [estimator.init_state(slot) for slot in range(n_slots)]
    total = torch.zeros(n_slots, dtype=torch.float64)
    for meta_step in range(truncations):
        estimate, states = estimator.estimate(meta_params, states, meta_step)
        total += estimate.grads[:, 0]
    return total


def truncated_step(rule, length: int, unroll: int, meta_loss: str = "train_mean") -> TruncatedStep:
    return TruncatedStep(rule, FAMILY, ConstantSchedule(length), unroll_length=unroll, meta_loss=meta_loss)


@pytest.mark.parametrize("meta_loss", ["train_mean", "heldout_last"])
def test_tbptt_over_the_whole_episode_is_the_exact_gradient(meta_loss):
    rule = LogLRRule(lr=0.3, dtype="float64")
    step = truncated_step(rule, length=15, unroll=15, meta_loss=meta_loss)
    estimator = TruncatedBPTT(step)
    grads = sum_over_truncations(estimator, n_slots=3, truncations=1, rule=rule)
    for slot in range(3):
        expected = closed_form_grad(step.task(slot, 0).task, 0.3, 15, meta_loss)
        assert grads[slot].item() == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_greedy_tbptt_is_the_one_step_gradient():
    rule = LogLRRule(lr=0.3, dtype="float64")
    step = truncated_step(rule, length=5, unroll=1)
    grad = sum_over_truncations(TruncatedBPTT(step), n_slots=1, truncations=1, rule=rule)
    assert grad.item() == pytest.approx(closed_form_grad(step.task(0, 0).task, 0.3, 1, "train_mean"), rel=1e-10)


def test_first_order_tbptt_treats_inner_gradients_as_constants():
    """``x_K = x_0 - eta sum_k g_k`` with the g_k held fixed: dL/dlog(eta) = grad L(x_K) . (-eta sum_k g_k)."""
    rule = LogLRRule(lr=0.3, dtype="float64")
    step = TruncatedStep(rule, FAMILY, ConstantSchedule(15), unroll_length=15, meta_loss="heldout_last",
                         second_order=False)
    grads = sum_over_truncations(TruncatedBPTT(step), n_slots=2, truncations=1, rule=rule)
    for slot in range(2):
        task = step.task(slot, 0).task
        a, x0 = task.model.a, task.model.x.detach()
        xs = [x0 * (1 - 0.3 * a) ** t for t in range(16)]
        expected = (a * xs[15] * -0.3 * sum(a * x for x in xs[:15])).sum()
        assert grads[slot].item() == pytest.approx(expected.item(), rel=1e-10)
        assert grads[slot].item() != pytest.approx(closed_form_grad(task, 0.3, 15, "heldout_last"), rel=1e-3)


class BrokenGradientRule(LogLRRule):
    """Finite updates whose meta-gradient is NaN (sqrt'(0) * 0)."""

    def forward(self, params, grads, state, context=None):
        spike = torch.sqrt(self.log_lr - self.log_lr.detach())
        return [self.log_lr.exp() * g + 0 * spike for g in grads], state


def test_a_slot_whose_meta_gradient_is_not_finite_starts_a_new_episode():
    rule = BrokenGradientRule(lr=0.3, dtype="float64")
    estimator = TruncatedBPTT(truncated_step(rule, length=15, unroll=5))
    estimate, states = estimator.estimate(dict(rule.named_parameters()), [estimator.init_state(0)], 0)
    assert torch.isfinite(estimate.losses).all() and not torch.isfinite(estimate.grads).all()
    assert (states[0].episode, states[0].step) == (1, 0)


def ratio_stats(estimates: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Mean of ``estimate / truth`` over slots (1 for an unbiased estimator) and its standard error."""
    ratio = estimates / truth
    return ratio.mean().item(), (ratio.std() / math.sqrt(len(ratio))).item()


def test_full_unroll_es_agrees_with_the_exact_gradient():
    rule = LogLRRule(lr=0.05, dtype="float64")
    n, length = 200, 10
    step = truncated_step(rule, length=length, unroll=length)
    es = sum_over_truncations(TruncatedES(step, sigma=0.01), n, 1, rule)
    truth = torch.tensor([closed_form_grad(step.task(s, 0).task, 0.05, length, "train_mean") for s in range(n)])
    mean, se = ratio_stats(es, truth)
    assert se < 0.15  # precise enough that a wrong scale (e.g. a missing factor 2) would fail
    assert abs(mean - 1) < 4 * se


def test_pes_is_unbiased_over_truncations_where_truncated_estimators_are_not():
    """Episode of 20 steps in 10 truncations of 2: the full-unroll gradient of the summed
    truncation meta-losses vs the per-episode sums of TBPTT, truncated ES and PES estimates."""
    rule = LogLRRule(lr=0.05, dtype="float64")
    n, length, unroll = 200, 20, 2
    step = truncated_step(rule, length=length, unroll=unroll)
    truncations = length // unroll
    # sum over truncations of (mean loss over the truncation's steps) = (length / unroll) * mean over all
    truth = torch.tensor(
        [closed_form_grad(step.task(s, 0).task, 0.05, length, "train_mean") * truncations for s in range(n)]
    )
    tbptt = sum_over_truncations(TruncatedBPTT(step), n, truncations, rule)
    es = sum_over_truncations(TruncatedES(step, sigma=0.01), n, truncations, rule)
    pes = sum_over_truncations(PersistentES(step, sigma=0.01), n, truncations, rule)

    pes_mean, pes_se = ratio_stats(pes, truth)
    tbptt_mean, _ = ratio_stats(tbptt, truth)
    es_mean, es_se = ratio_stats(es, truth)
    assert abs(pes_mean - 1) < 4 * pes_se  # PES: no detectable bias ...
    assert abs(tbptt_mean - 1) > 8 * pes_se  # ... at a precision that clearly resolves TBPTT's bias
    assert tbptt_mean < 0.7
    assert abs(es_mean - 1) > 8 * es_se  # without the accumulator, ES is biased like TBPTT


def test_pes_states_persist_within_an_episode_and_restart_after_it():
    rule = MomentumRule(lr=0.05)
    step = TruncatedStep(rule, QuadraticFamily(dim=3), ConstantSchedule(4), unroll_length=2)
    pes = PersistentES(step, sigma=0.01)
    meta_params = dict(rule.named_parameters())
    states = [pes.init_state(0)]
    _, states = pes.estimate(meta_params, states, meta_step=0)
    first = states[0]
    assert first.pos.step == first.neg.step == 2 and first.pos.episode == 0
    assert not torch.equal(first.pos.params[0], first.neg.params[0])  # the two runs diverged
    eps0 = pes.noise(0, 0, first.accumulator, 0.01)
    assert torch.equal(first.accumulator, eps0)
    _, states = pes.estimate(meta_params, states, meta_step=1)  # ends the episode
    second = states[0]
    assert second.pos.episode == 1 and second.pos.step == 0
    assert torch.count_nonzero(second.accumulator) == 0
    assert torch.equal(second.pos.params[0], second.neg.params[0])


@pytest.mark.parametrize("estimator_cls", [TruncatedBPTT, TruncatedES, PersistentES])
def test_estimators_with_a_stateful_rule_give_finite_gradients_for_every_meta_parameter(estimator_cls):
    rule = MomentumRule(lr=0.05)
    step = TruncatedStep(rule, QuadraticFamily(dim=3, noise_std=0.1), ConstantSchedule(6), unroll_length=3)
    estimator = estimator_cls(step)
    states = [estimator.init_state(slot) for slot in range(2)]
    estimate, states = estimator.estimate(dict(rule.named_parameters()), states, meta_step=0)
    assert estimate.grads.shape == (2, 2)
    assert torch.isfinite(estimate.grads).all() and (estimate.grads != 0).all()
    assert estimate.losses.shape == (2,)
    assert [c["slot"] for c in estimate.curves] == [0, 1]
    assert all(len(c["losses"]) == 3 for c in estimate.curves)
