"""NeuralGraphRule: permutation equivariance, documented init, chunking, meta-gradients, fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from encoders import NeuralGraph
from encoders.symmetry import permute_flat, random_hidden_permutation
from l2o import NeuralGraphOpt, NeuralGraphRule, learned_step, learned_step_
from l2o import features as F
from l2o.graph_rule import NeuronMap
from tests.encoders.networks import build
from tests.l2o.graph_rule_reference import reference_updates


def random_rule(seed: int = 0, **kw) -> NeuralGraphRule:
    """A rule with every meta-parameter random (the zero-initialised head would hide the graph)."""
    torch.manual_seed(seed)
    rule = NeuralGraphRule(**kw).double()
    with torch.no_grad():
        for p in rule.parameters():
            p.normal_(0, 0.5)
    return rule


def train(model: nn.Module, example: torch.Tensor, rule: NeuralGraphRule, steps: int = 3) -> torch.Tensor:
    opt = NeuralGraphOpt(model.parameters(), rule=rule, model=model, lr=1.0)
    for _ in range(steps):
        opt.zero_grad()
        out = model(example)
        (out.double() ** 2).mean().backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def permuted_pair(name: str) -> tuple[nn.Module, nn.Module, torch.Tensor, NeuralGraph, torch.Tensor]:
    """``(model, permuted, example, graph, sigma)``: network ``name`` in float64 and a copy whose
    hidden neurons are permuted by ``sigma``."""
    model, example = build(name)
    model, example = model.double(), example.double() if example.is_floating_point() else example
    graph = NeuralGraph.from_module(model)
    sigma = random_hidden_permutation(graph, torch.Generator().manual_seed(1))
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(graph.unflatten(permute_flat(graph, graph.to_flat(), sigma)), strict=False)
    return model, permuted, example, graph, sigma


@pytest.mark.parametrize("name", ["mlp", "siren", "cnn_mixed_kernels", "resnet", "transformer"])
def test_step_on_permuted_network_is_the_permuted_step(name):
    model, permuted, example, graph, sigma = permuted_pair(name)
    rule = random_rule()
    after = train(model, example, rule)
    after_permuted = train(permuted, example, rule)
    assert (after - graph.to_flat()).abs().max() > 1e-3, "the steps should move the parameters"
    torch.testing.assert_close(after_permuted, permute_flat(graph, after, sigma), atol=1e-9, rtol=1e-9)


def _as_full(neurons: NeuronMap, shape: torch.Size) -> NeuronMap:
    """The same map stored element by element (the general layout no traced layer needs today)."""
    ids = {"row": neurons.ids[:, None], "col": neurons.ids[None], "full": neurons.ids}[neurons.along]
    return NeuronMap("full", ids.expand(shape).clone())


@pytest.mark.parametrize("name, gated", [("mlp", True), ("mlp", False), ("cnn_mixed_kernels", True),
                                         ("cnn_flatten", False), ("resnet", True), ("transformer", True)])
def test_factored_blocked_step_equals_the_per_element_reference(name, gated):
    model, _ = build(name)
    model = model.double()
    params = [p.detach() for p in model.parameters()]
    torch.manual_seed(2)
    grads = [torch.randn_like(p) for p in params]
    rule = random_rule(chunk_size=17, gated=gated)  # several row blocks per tensor
    state = rule.init_state(params)
    expected = reference_updates(rule, model, grads, state)
    context = rule.build_context(params, model)
    updates, _ = rule(params, grads, state, context)
    for u, e in zip(updates, expected):
        torch.testing.assert_close(u, e, atol=1e-12, rtol=1e-10)

    shapes = [torch.Size(F.matrix_shape(p.shape)) for p in params]
    for maps in (context.source, context.target, context.kind):
        maps[:] = [_as_full(m, shape) for m, shape in zip(maps, shapes)]
    updates, _ = rule(params, grads, state, context)
    for u, e in zip(updates, expected):
        torch.testing.assert_close(u, e, atol=1e-12, rtol=1e-10)

    stepped = [p.clone() for p in params]
    learned_step_(rule, stepped, grads, rule.init_state(params), context)  # the optimizer's in-place path
    for new, p, e in zip(stepped, params, expected):
        torch.testing.assert_close(new, p - e, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("gated", [True, False])
def test_weights_without_gradient_stay_put_only_with_the_gated_output(gated):
    """Input 0 is blank in every batch, so its first-layer weights never get a gradient: the gated
    form leaves them exactly; the additive form moves them by the context of their neurons."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    before = model[0].weight[:, 0].clone()
    opt = NeuralGraphOpt(model.parameters(), rule=random_rule(gated=gated), model=model)
    for _ in range(3):
        x = torch.randn(16, 4, dtype=torch.float64)
        x[:, 0] = 0
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    moved = (model[0].weight[:, 0] - before).abs().max()
    assert (moved == 0) if gated else (moved > 1e-6)


def test_update_uses_graph_context():
    """Changing the gradient of the last layer changes the update of the first layer (unlike FF)."""
    model, _ = build("mlp")
    params = [p.detach().double() for p in model.parameters()]
    rule = random_rule()
    ctx = rule.build_context(params, model)
    grads = [torch.randn_like(p) for p in params]
    other = [g.clone() for g in grads]
    other[-2] = torch.randn_like(other[-2])  # not a rescaling: features are normalised per tensor
    first, _ = rule(params, grads, rule.init_state(params), ctx)
    second, _ = rule(params, other, rule.init_state(params), ctx)
    assert (first[0] - second[0]).abs().max() > 1e-8


def test_initial_rule_is_adam():
    model, example = build("resnet")
    twin = copy.deepcopy(model)
    opt = NeuralGraphOpt(model.parameters(), model=model, rule="neural-graph")
    adam = torch.optim.Adam(twin.parameters(), lr=1e-3)
    for _ in range(5):
        for m, o in ((model, opt), (twin, adam)):
            o.zero_grad()
            m(example).pow(2).mean().backward()
            o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_chunking_does_not_change_the_update():
    model, _ = build("cnn_mixed_kernels")
    params = [p.detach().double() for p in model.parameters()]
    grads = [torch.randn_like(p) for p in params]
    whole, chunked = random_rule(chunk_size=2**16), random_rule(chunk_size=7)
    a, _ = whole(params, grads, whole.init_state(params), whole.build_context(params, model))
    b, _ = chunked(params, grads, chunked.init_state(params), chunked.build_context(params, model))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_meta_gradients_reach_every_meta_parameter():
    model, example = build("mlp")
    rule = NeuralGraphRule()
    params = [p.detach() for p in model.parameters()]
    grads = [torch.randn_like(p) for p in params]
    meta = {k: v.detach().normal_(0, 0.1).requires_grad_(True) for k, v in rule.named_parameters()}
    new, _ = learned_step(rule, params, grads, rule.init_state(params), rule.build_context(params, model),
                          meta_params=meta)
    loss = torch.func.functional_call(model, dict(zip([n for n, _ in model.named_parameters()], new)), (example,))
    loss.pow(2).mean().backward()
    missing = [k for k, v in meta.items() if v.grad is None or not v.grad.abs().sum() > 0]
    assert not missing, f"no meta-gradient for {missing}"


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.rnn(x)[0])


def test_untraceable_model_falls_back_to_shape_chaining_with_a_warning():
    model = Untraceable()
    with pytest.warns(UserWarning, match="could not trace the model"):
        opt = NeuralGraphOpt(model.parameters(), model=model)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    subset = nn.Linear(3, 3)
    with pytest.warns(UserWarning, match="not parameters of the model"):
        NeuralGraphOpt(subset.parameters(), model=build("mlp")[0])


def test_context_for_other_parameters_is_refused():
    model, _ = build("mlp")
    params = [p.detach() for p in model.parameters()]
    rule = NeuralGraphRule()
    ctx = rule.build_context(params[:2])
    with pytest.raises(ValueError, match="built for 2 parameters"):
        rule(params, [torch.zeros_like(p) for p in params], rule.init_state(params), ctx)
