"""Exact graphs of the architectures people train (Hugging Face, torch transformer layers, a
ResNet-18 and a ViT written here): traced without a fallback, every parameter claimed by a layer
template, exact round trips, and hidden-neuron (and within-head) permutations that are symmetries
of the *network*: the permuted parameters compute the same function, and the optimizer's step and
the encoders commute with them."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch_geometric.data import Batch

from encoders import NeuralGraph, Role
from encoders.symmetry import (
    equivariance_error,
    permute_edges,
    permute_flat,
    permute_nodes,
    random_hidden_permutation,
)
from l2o import NeuralGraphOpt
from l2o import features as F
from tests.encoders.architectures import ARCHITECTURES, Arch, build_arch
from tests.encoders.conftest import LAYOUT, EncoderWithHeads, make_encoder
from tests.l2o.graph_rule_reference import element_maps
from tests.l2o.test_graph_rule import random_rule

NAMES = sorted(ARCHITECTURES)
FLOAT32_INSIDE = {"hf_llama", "hf_qwen2", "hf_t5"}
CONVOLUTIONAL = {"resnet18_style", "mobilenet_style", "hf_mobilenet_v2"}


@pytest.fixture(scope="module")
def traced() -> dict[str, tuple[Arch, NeuralGraph]]:
    cache: dict[str, tuple[Arch, NeuralGraph]] = {}

    def get(name: str) -> tuple[Arch, NeuralGraph]:
        if name not in cache:
            arch = build_arch(name)
            cache[name] = arch, NeuralGraph.from_module(arch.model, arch.example_inputs)
        return cache[name]

    return get


def permuted(arch: Arch, graph: NeuralGraph, sigma: torch.Tensor) -> torch.nn.Module:
    model = copy.deepcopy(arch.model)
    x, edge_attr = permute_nodes(graph.x, sigma), permute_edges(graph, graph.edge_attr, sigma)
    model.load_state_dict(graph.to_state_dict(x, edge_attr), strict=False)
    return model


@pytest.mark.parametrize("name", NAMES)
def test_traced_exactly(traced, name):
    arch, graph = traced(name)
    assert graph.param_names == [n for n, _ in arch.model.named_parameters()]
    for pname, value in graph.to_state_dict().items():
        assert torch.equal(value, arch.model.get_parameter(pname)), pname
    assert not (graph.node_role == Role.OTHER).any(), "every parameter should be claimed by a layer template"
    if name not in CONVOLUTIONAL:
        assert (graph.node_role == Role.ATTENTION).any()


@pytest.mark.parametrize("name", NAMES)
def test_hidden_and_head_permutations_keep_the_function(traced, name):
    arch, graph = traced(name)
    sigma = random_hidden_permutation(graph, torch.Generator().manual_seed(3))
    moved = sigma != torch.arange(graph.num_nodes)
    assert moved.any()
    if name not in CONVOLUTIONAL:
        assert moved[graph.node_role == Role.ATTENTION].any(), "attention neurons should move within their heads"
    # Llama, Qwen2 and T5 compute their RMS norms (and rotary tables) in float32 even in a float64 model:
    # there, rounding the parameters to float32 alone moves the output by ~4e-6
    atol = 1e-5 if name in FLOAT32_INSIDE else 1e-10
    with torch.no_grad():
        reference = arch()
        torch.testing.assert_close(arch(permuted(arch, graph, sigma)), reference, atol=atol, rtol=1e-9)


def test_moving_a_neuron_the_graph_fixes_changes_the_function(traced):
    """A control: Llama's rotary embedding mixes each query/key head's two halves, so the graph
    fixes those neurons; moving them anyway (the same way in Q and K) changes the output."""
    arch, graph = traced("hf_llama")
    fixed = (graph.node_role == Role.ATTENTION) & (graph.node_group < 0)
    assert fixed.any() and (graph.node_group[graph.node_role == Role.ATTENTION] >= 0).any()  # V heads still move
    sigma = torch.arange(graph.num_nodes)
    for unit in graph.node_unit[fixed].unique():  # swap the first two neurons of every query and key head
        first, second = (graph.node_unit == unit).nonzero().squeeze(1)[:2]
        sigma[first], sigma[second] = second, first
    with torch.no_grad():
        assert not torch.allclose(arch(permuted(arch, graph, sigma)), arch(), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_uses_the_exact_graph_and_commutes_with_permutations(traced, name):
    arch, graph = traced(name)
    sigma = random_hidden_permutation(graph, torch.Generator().manual_seed(1))
    rule = random_rule()

    def train(model: torch.nn.Module) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback to a chained graph
            opt = NeuralGraphOpt(model.parameters(), rule=rule, model=model, example_inputs=arch.example_inputs)
        for _ in range(2):
            opt.zero_grad()
            (arch(model) ** 2).mean().backward()
            # A key bias has a zero gradient in exact arithmetic (softmax ignores a constant per
            # query), so its computed gradient is rounding noise, which the rule's Adam-like
            # normalization blows up to O(1) features; zero such entries so that the comparison
            # measures the graph's symmetry rather than that noise
            largest = max(float(p.grad.abs().max()) for p in model.parameters())
            for p in model.parameters():
                p.grad.masked_fill_(p.grad.abs() < 1e-12 * largest, 0.0)
            opt.step()
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    after = train(copy.deepcopy(arch.model))
    after_permuted = train(permuted(arch, graph, sigma))
    step = float((after - graph.to_flat()).abs().max())
    assert step > 1e-3
    # to 1e-9 of the step; to 1e-3 where the gradients themselves carry float32 rounding. A graph
    # whose symmetry is wrong is off by the size of the step
    tolerance = (1e-3 if name in FLOAT32_INSIDE else 1e-9) * step
    torch.testing.assert_close(after_permuted, permute_flat(graph, after, sigma), atol=tolerance, rtol=0)


@pytest.mark.parametrize("variant", ["ng-gnn", "ng-t-sparse"])
@pytest.mark.parametrize("name", NAMES)
def test_encoders_commute_with_permutations(traced, name, variant):
    arch, _ = traced(name)
    graph = NeuralGraph.from_module(arch.model, arch.example_inputs, **LAYOUT)
    graph.x, graph.edge_attr = graph.x.float(), graph.edge_attr.float()
    encoder = EncoderWithHeads(make_encoder(variant, [graph], max_depth=128), max_outputs=64).eval()
    sigma = random_hidden_permutation(graph, torch.Generator().manual_seed(2))

    def fn(x, edge_attr):
        with torch.no_grad():
            return encoder(Batch.from_data_list([graph.to_pyg(x=x, edge_attr=edge_attr)]))

    err = equivariance_error(fn, graph, sigma)
    assert err.max() <= 1e-4, err


class Flipped(torch.nn.Module):
    """Reverses its hidden features: no layer template describes that."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(3, 4)
        self.outer = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.inner(x).flip(-1))


def test_fallback_warning_names_the_module_the_reason_and_what_chaining_gets_wrong():
    model = Flipped()
    with pytest.warns(UserWarning) as record:
        NeuralGraphOpt(model.parameters(), model=model, example_inputs=(torch.randn(2, 3),))
    message = str(record[0].message)
    assert "'flip'" in message and "Flipped.forward" in message
    assert "torch.fx" in message and "torch.export" in message
    assert "chained from parameter shapes" in message and "residual connections" in message
    with pytest.warns(UserWarning, match="pass example_inputs="):
        NeuralGraphOpt(model.parameters(), model=model)


@pytest.mark.parametrize("name", NAMES)
def test_rule_context_from_the_builder_matches_the_built_graph(traced, name):
    """The rule reads the graph builder directly (no per-edge arrays); its per-element neurons,
    kinds and counts are those of the full NeuralGraph."""
    arch, graph = traced(name)
    params = list(arch.model.parameters())
    context = random_rule().build_context(params, arch.model, arch.example_inputs)
    source, target, kind = element_maps(graph)
    counts = torch.zeros(graph.num_nodes, 3)
    offset = 0
    for i, p in enumerate(params):
        span = slice(offset, offset + p.numel())
        offset += p.numel()
        shape = torch.Size(F.matrix_shape(p.shape))
        for maps, expected in ((context.source, source), (context.target, target), (context.kind, kind)):
            m = maps[i]
            ids = {"row": m.ids[:, None], "col": m.ids[None], "full": m.ids}[m.along].expand(shape)
            assert torch.equal(ids.reshape(-1), expected[span]), (graph.param_names[i], m.along)
        columns = ((0, target), (1, source)) if context.on_edge[i] else ((2, source),)
        for column, nodes in columns:
            counts[:, column].index_add_(0, nodes[span], torch.ones(p.numel()))
    assert torch.equal(context.counts, counts)
    assert context.num_nodes == graph.num_nodes
