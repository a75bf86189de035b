"""The orthogonalized direction (l2o.orthogonal) and the step-size rules' ``orthogonal`` option:
Newton-Schulz against the SVD, the RMS match, permutation equivariance of the rules that use it,
which matrices it applies to, and the fused step against the reference."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from l2o import StepSizeGraphRule, StepSizeScheduleRule, StepSizeTensorRule
from l2o.orthogonal import is_orthogonalized, newton_schulz, orthogonal_direction, product_dtype
from l2o.stepsize_rule import graph_rule_with_schedule
from tests.l2o.test_adaptive_rule import assert_eager_fused_step_is_the_reference, mild_rule, random_rule
from tests.l2o.test_graph_rule import permuted_pair, train
from tests.l2o.test_optim import _model


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (7, 7), (3, 16, 9)])
def test_newton_schulz_pushes_singular_values_towards_one_and_keeps_the_singular_vectors(shape):
    """Against the SVD ``M = U S V^T``: the result is ``U S' V^T`` with every ``S'`` in Muon's band
    (about 0.7-1.2 after 5 steps), for tall, wide, square and batched matrices."""
    torch.manual_seed(0)
    matrix = torch.randn(shape, dtype=torch.float64)
    matrix[..., 0, :] *= 30  # a spread of singular values, as momentum has
    result = newton_schulz(matrix)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    inner = u.mT @ result @ vh.mT  # S' (diagonal) when the singular vectors are kept
    diagonal = torch.diagonal(inner, dim1=-2, dim2=-1)
    torch.testing.assert_close(inner, torch.diag_embed(diagonal), atol=1e-9, rtol=0)
    assert s.max() / s.min() > 20
    assert diagonal.min() > 0.6 and diagonal.max() < 1.25, diagonal
    if matrix.dim() == 3:
        torch.testing.assert_close(result[1], newton_schulz(matrix[1]), rtol=1e-12, atol=1e-14)


def test_newton_schulz_commutes_with_row_and_column_permutations():
    torch.manual_seed(1)
    matrix = torch.randn(9, 6, dtype=torch.float64)
    rows, cols = torch.randperm(9), torch.randperm(6)
    torch.testing.assert_close(newton_schulz(matrix[rows][:, cols]), newton_schulz(matrix)[rows][:, cols],
                               rtol=1e-12, atol=1e-14)


def test_orthogonal_direction_has_the_rms_of_the_given_direction_and_zero_is_safe():
    torch.manual_seed(2)
    mom, direction = torch.randn(8, 5, dtype=torch.float64), 3 * torch.randn(8, 5, dtype=torch.float64)
    result = orthogonal_direction(mom, direction)
    torch.testing.assert_close(result.square().mean().sqrt(), direction.square().mean().sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(result / result.norm(), newton_schulz(mom) / newton_schulz(mom).norm())
    zero = torch.zeros(8, 5, dtype=torch.float64, requires_grad=True)
    out = orthogonal_direction(zero, zero * 2)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.isfinite(zero.grad).all()


def test_which_tensors_move_along_the_orthogonalized_direction():
    """The graph rule: every weight matrix but the output layer's (it knows that layer); the
    per-tensor twin: every weight matrix (a shape does not say which is the output layer); neither
    touches vectors, kernels or anything without ``orthogonal=True``."""
    assert is_orthogonalized((8, 6)) and not is_orthogonalized((8,)) and not is_orthogonalized((1, 6))
    assert not is_orthogonalized((4, 3, 3, 3))
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    params = [p.detach() for p in model.parameters()]
    graph_rule = StepSizeGraphRule(orthogonal=True)
    context = graph_rule.build_context(params, model)
    assert graph_rule.orthogonalized(params, context) == [True, False, True, False, False, False]
    assert StepSizeTensorRule(orthogonal=True).orthogonalized(params) == [True, False, True, False, True, False]
    assert StepSizeGraphRule().orthogonalized(params, context) == [] == StepSizeTensorRule().orthogonalized(params)


def test_an_orthogonalized_update_is_the_orthogonalized_momentum_at_prodigys_size():
    """Per flagged matrix, the update has Prodigy's RMS and the direction ``newton_schulz(m)``;
    the other tensors get exactly Prodigy's update."""
    model = _model().double()
    params = [p.detach() for p in model.parameters()]
    rule, prodigy = StepSizeTensorRule(orthogonal=True).double(), StepSizeTensorRule().double()
    torch.manual_seed(3)
    grads = [torch.randn_like(p) for p in params]
    state = rule.init_state(params)
    updates, new_state = rule(params, grads, state, None)
    expected, _ = prodigy(params, grads, state, None)
    for flag, update, reference, mom in zip(rule.orthogonalized(params), updates, expected, new_state["mom"]):
        if flag:
            torch.testing.assert_close(update.square().mean(), reference.square().mean(), rtol=1e-10, atol=0)
            direction = newton_schulz(mom)
            torch.testing.assert_close(update / update.norm(), direction / direction.norm(), rtol=1e-10, atol=1e-14)
        else:
            torch.testing.assert_close(update, reference, rtol=0, atol=0)


@pytest.mark.parametrize("rule_class", [StepSizeGraphRule, StepSizeTensorRule], ids=["graph", "tensor"])
@pytest.mark.parametrize("name", ["mlp", "cnn_mixed_kernels", "resnet", "transformer"])
def test_orthogonal_step_on_permuted_network_is_the_permuted_step(name, rule_class):
    from encoders.symmetry import permute_flat

    model, permuted, example, graph, sigma = permuted_pair(name)
    rule = random_rule(partial(rule_class, orthogonal=True))
    after, after_permuted = train(model, example, rule), train(permuted, example, rule)
    assert (after - graph.to_flat()).abs().max() > 1e-8, "the steps should move the parameters"
    torch.testing.assert_close(after_permuted, permute_flat(graph, after, sigma), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", ["mlp", "resnet", "transformer"])
def test_orthogonal_eager_fused_step_equals_the_reference(name):
    """In float64, where the Newton-Schulz products are exact enough to compare the two paths to
    1e-5 (in float32 they take bfloat16 inputs, and the paths' different float rounding of the
    momentum becomes bfloat16 rounding of the direction)."""
    assert_eager_fused_step_is_the_reference(name, mild_rule(StepSizeGraphRule, orthogonal=True), torch.float64)


def test_float32_matrices_are_orthogonalized_with_bfloat16_products_and_stay_close():
    """float32 and narrower: bfloat16 products (several times faster where the hardware has them),
    within bfloat16's few per cent of the float64 iteration; float64 keeps float64 products."""
    assert product_dtype(torch.float32) == product_dtype(torch.float16) == torch.bfloat16
    assert product_dtype(torch.float64) == torch.float64
    torch.manual_seed(4)
    matrix = torch.randn(24, 40, dtype=torch.float64)
    single = newton_schulz(matrix.float())
    assert single.dtype == torch.float32
    exact = newton_schulz(matrix)
    assert float((single.double() - exact).norm() / exact.norm()) < 0.05


def test_a_schedule_moved_into_the_graph_rule_keeps_its_orthogonal_option():
    schedule = random_rule(partial(StepSizeScheduleRule, orthogonal=True))
    assert graph_rule_with_schedule(schedule).orthogonal
    assert not graph_rule_with_schedule(schedule, orthogonal=False).orthogonal


@pytest.mark.parametrize("rule_class", [StepSizeGraphRule, StepSizeTensorRule, StepSizeScheduleRule],
                         ids=["graph", "tensor", "schedule"])
@pytest.mark.parametrize("value", ["false", 1, None])
def test_orthogonal_must_be_a_bool(rule_class, value):
    """A string or number (e.g. from a hand-edited config) is refused by name, not read as True."""
    with pytest.raises(TypeError, match="orthogonal must be True or False"):
        rule_class(orthogonal=value)


@pytest.mark.parametrize("name", ["mlp", "cnn_mixed_kernels", "resnet", "transformer"])
def test_fused_step_skips_the_graph_when_the_neurons_step_sizes_are_constant(name):
    """v6 and v7 ship their per-neuron step sizes at 1 (``scale_out``'s weight zero): their fused
    step pools nothing and never runs the GNN, and still makes the reference step's updates (which
    always runs it), here with a non-zero bias, kind table and schedule, orthogonalized."""
    from l2o.fused_adaptive import FusedStepSizeStep
    from tests.encoders.networks import build
    from tests.l2o.test_adaptive_rule import drifting_grads

    rule = mild_rule(StepSizeGraphRule, schedule_hidden=8, orthogonal=True).double()
    with torch.no_grad():
        rule.scale_out.weight.zero_()
    assert rule.constant_neurons() and not mild_rule(StepSizeGraphRule).constant_neurons()
    assert_eager_fused_step_is_the_reference(name, rule, torch.float64)

    model, _ = build(name)
    params = [p.detach().clone() for p in model.double().parameters()]
    context = rule.build_context(params, model)
    fused, state = FusedStepSizeStep(rule, context, compiled=False), rule.init_state(params)

    def no_graph(*args, **kwargs):
        raise AssertionError("the GNN ran")

    rule.neuron_states = no_graph
    for step in range(3):
        state = fused(params, drifting_grads(params, step), state, [1.0] * len(params), [0.0] * len(params),
                      [False] * len(params))
    with pytest.raises(ValueError, match="constant_neurons"):
        mild_rule(StepSizeGraphRule).log_scales(context, None, torch.zeros(11))
