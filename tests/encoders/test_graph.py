"""NeuralGraph: exact round trips, structure, symmetry and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from encoders import EdgeKind, NeuralGraph, Role
from encoders.symmetry import permute_edges, permute_nodes, random_hidden_permutation
from tests.encoders.networks import NETWORKS, build


def assert_round_trip(graph: NeuralGraph, named: dict[str, torch.Tensor]) -> None:
    rebuilt = graph.to_state_dict()
    assert list(rebuilt) == list(named)
    for name, tensor in named.items():
        assert torch.equal(rebuilt[name], tensor), name


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_from_module_round_trip(name):
    model, _ = build(name)
    params = dict(model.named_parameters())
    assert_round_trip(NeuralGraph.from_module(model), params)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_from_parameters_round_trip(name):
    model, _ = build(name)
    params = dict(model.named_parameters())
    assert_round_trip(NeuralGraph.from_parameters(model.named_parameters()), params)
    plain = NeuralGraph.from_parameters(list(params.values()))
    assert [tuple(s) for s in plain.param_shapes] == [tuple(p.shape) for p in params.values()]
    assert torch.equal(plain.to_flat(), torch.cat([p.reshape(-1) for p in params.values()]))


def test_mlp_structure():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    g = NeuralGraph.from_module(model)
    assert g.num_nodes == 3 + 5 + 2 and g.num_edges == 15 + 10
    assert g.node_role.tolist() == [Role.INPUT] * 3 + [Role.HIDDEN] * 5 + [Role.OUTPUT] * 2
    assert g.node_depth.tolist() == [0] * 3 + [1] * 5 + [2] * 2
    assert g.node_activation.tolist() == [0] * 3 + [1] * 5 + [0] * 2
    # edge (input i -> hidden j) carries W[j, i]; hidden biases are node features, inputs have 0
    src, dst = g.edge_index
    w = model[0].weight
    first = dst < 8
    assert torch.equal(g.edge_attr[first, 0], w[dst[first] - 3, src[first]])
    assert torch.equal(g.x[3:8, 0], model[0].bias) and torch.equal(g.x[:3], torch.zeros(3, 1))
    assert (g.node_group[:3] == -1).all() and (g.node_group[8:] == -1).all() and (g.node_group[3:8] >= 0).all()


def test_conv_kernels_are_centred_and_residuals_are_identity():
    model, _ = build("resnet")
    g = NeuralGraph.from_module(model)
    assert g.kernel_grid == (5, 5)
    grid = g.edge_attr.view(g.num_edges, 5, 5)
    conv3 = model[0].weight  # [4, 2, 3, 3] placed in the middle of the 5x5 grid
    first = (g.edge_kind == EdgeKind.WEIGHT).nonzero()[: 4 * 2].squeeze(1)
    src, dst = g.edge_index[:, first]
    assert torch.equal(grid[first, 1:4, 1:4], conv3[dst - 2, src])
    assert grid[first][:, 0].abs().sum() == 0 and grid[first][:, :, 4].abs().sum() == 0
    residual = g.edge_kind == EdgeKind.RESIDUAL
    assert residual.sum() == 2 * 4
    identity = torch.zeros(5, 5)
    identity[2, 2] = 1
    assert torch.equal(grid[residual], identity.expand(int(residual.sum()), 5, 5))
    # the linear layer after global pooling sits at the centre too
    last = g.edge_index[1] >= g.num_nodes - 3
    off_centre = identity == 0
    assert (grid[last][:, 2, 2] != 0).all() and (grid[last][:, off_centre] == 0).all()


def test_flatten_keeps_spatial_positions_per_channel():
    model, _ = build("cnn_flatten")
    g = NeuralGraph.from_module(model)
    linear = model[4].weight.view(5, 3, 4)  # [out, channel, spatial]
    last = g.edge_index[1] >= g.num_nodes - 5
    src, dst = g.edge_index[:, last]
    assert torch.equal(g.edge_attr[last, :4], linear[dst - (g.num_nodes - 5), src - 1])


def test_attention_keeps_q_k_v_neurons_split_into_heads():
    model, _ = build("transformer")
    g = NeuralGraph.from_module(model)
    att = g.node_role == Role.ATTENTION  # two attention layers: the plain one, then the encoder's
    assert att.sum() == 2 * 24 and g.node_head[att].tolist() == ([0] * 4 + [1] * 4) * 6
    assert g.edge_channels == 1 and g.node_channels == 1
    # per layer: Q/K head 0, Q/K head 1, V head 0, V head 1 are the permutation groups
    assert len(g.node_group[att].unique()) == 8 and (g.node_group[att] >= 0).all()
    mha = model[1].self_attn
    first = int(att.nonzero()[0])
    into = (g.edge_index[1] >= first) & (g.edge_index[1] < first + 24) & (g.edge_kind == EdgeKind.WEIGHT)
    src, dst = g.edge_index[:, into]
    first_in = int(src.min())
    assert torch.equal(g.edge_attr[into, 0], mha.in_proj_weight[dst - first, src - first_in])
    # each key neuron is joined to the query neuron it multiplies, and they are permuted together
    keys = (g.edge_kind == EdgeKind.ATTENTION) & (g.edge_index[1] < first + 24)
    src, dst = g.edge_index[:, keys]
    assert torch.equal(src - first, dst - first + 8) and torch.equal(g.node_group[src], g.node_group[dst])


def test_standalone_parameter_gets_its_own_component():
    model, _ = build("scaled_mlp")
    g = NeuralGraph.from_module(model)
    other = g.node_role == Role.OTHER
    assert other.sum() == 1 and g.x[other, 0] == model.scale
    assert g.node_activation[(g.node_role == Role.HIDDEN)].unique().tolist() == [2]  # gelu


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_hidden_permutation_is_a_symmetry_of_the_network(name):
    """Permuting graph features by a random hidden-neuron permutation yields parameters of a network
    that computes the same function, and whose own traced graph is the permuted graph."""
    model, example = build(name)
    g = NeuralGraph.from_module(model)
    sigma = random_hidden_permutation(g, torch.Generator().manual_seed(3))
    assert (sigma != torch.arange(g.num_nodes)).any(), "the permutation should move something"
    x, edge_attr = permute_nodes(g.x, sigma), permute_edges(g, g.edge_attr, sigma)
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(g.to_state_dict(x, edge_attr), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(permuted(example), model(example), atol=1e-5, rtol=1e-5)
    g2 = NeuralGraph.from_module(permuted)
    assert torch.equal(g2.x, x) and torch.equal(g2.edge_attr, edge_attr)
    assert torch.equal(g2.edge_index, g.edge_index) and any(
        not torch.equal(a, b) for a, b in zip(g2.to_state_dict().values(), g.to_state_dict().values())
    )


def test_input_permutation_is_not_a_symmetry():
    """A control for the test above: moving input neurons changes the function."""
    model, example = build("mlp")
    g = NeuralGraph.from_module(model)
    sigma = torch.arange(g.num_nodes)
    sigma[:3] = torch.tensor([1, 2, 0])
    x, edge_attr = permute_nodes(g.x, sigma), permute_edges(g, g.edge_attr, sigma)
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(g.to_state_dict(x, edge_attr))
    with torch.no_grad():
        assert not torch.allclose(permuted(example), model(example), atol=1e-3)


def test_features_are_differentiable_both_ways():
    model, _ = build("cnn_mixed_kernels")
    g = NeuralGraph.from_module(model)
    flat = g.to_flat().clone().requires_grad_(True)
    x, e = g.features(flat)
    (x.sum() + 2 * e.sum()).backward()
    on_edge = torch.zeros(g.num_params, dtype=torch.bool)
    on_edge[g.edge_elem_pos] = True
    assert torch.equal(flat.grad, torch.where(on_edge, 2.0, 1.0))
    assert (g.element_edge >= 0).sum() == len(g.edge_elem_pos) and ((g.element_edge >= 0) ^ (g.element_node >= 0)).all()


@st.composite
def architectures(draw):
    """Random MLPs and CNNs (depth, widths, kernels, activations, optional residual blocks)."""
    acts = [nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Identity]
    if draw(st.booleans()):
        widths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b, bias=draw(st.booleans())), draw(st.sampled_from(acts))()]
        return nn.Sequential(*layers[:-1])
    channels = draw(st.lists(st.integers(1, 5), min_size=2, max_size=4))
    layers = []
    for a, b in zip(channels, channels[1:]):
        k = draw(st.sampled_from([1, 3, 5]))
        layers += [nn.Conv2d(a, b, k, padding=k // 2), draw(st.sampled_from(acts))()]
        if draw(st.booleans()):
            from tests.encoders.networks import ResidualConv

            layers.append(ResidualConv(b, draw(st.sampled_from([1, 3]))))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], draw(st.integers(1, 4)))]
    return nn.Sequential(*layers)


@settings(max_examples=25, deadline=None)
@given(architectures(), st.integers(0, 2**16))
def test_random_architectures_round_trip_and_symmetry(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    model.eval()
    g = NeuralGraph.from_module(model)
    assert_round_trip(g, dict(model.named_parameters()))
    assert_round_trip(NeuralGraph.from_parameters(model.named_parameters()), dict(model.named_parameters()))
    sigma = random_hidden_permutation(g, torch.Generator().manual_seed(seed))
    permuted = copy.deepcopy(model)
    state = g.to_state_dict(permute_nodes(g.x, sigma), permute_edges(g, g.edge_attr, sigma))
    permuted.load_state_dict(state, strict=False)  # BatchNorm buffers keep their (default) values
    first = next(model.parameters())
    example = torch.randn(3, first.shape[1], 5, 5) if first.dim() == 4 else torch.randn(3, first.shape[1])
    with torch.no_grad():
        torch.testing.assert_close(permuted(example), model(example), atol=1e-4, rtol=1e-4)


def test_from_parameters_chains_shapes_and_attaches_vectors():
    params = [torch.randn(4, 3), torch.randn(4), torch.randn(4), torch.randn(2, 4), torch.randn(7)]
    g = NeuralGraph.from_parameters(params)
    assert g.node_channels == 2  # bias, then a second per-neuron vector on the same layer
    assert g.num_nodes == 3 + 4 + 2 + 7 and g.num_edges == 12 + 8
    assert (g.node_role == Role.OTHER).sum() == 7
    unchained = NeuralGraph.from_parameters([torch.randn(4, 3), torch.randn(5, 6)])
    assert (unchained.node_role == Role.INPUT).sum() == 3 + 6


def test_shared_layout_lets_graphs_batch():
    from torch_geometric.data import Batch

    layout = {"kernel_grid": (5, 5), "node_channels": 3, "edge_channels": 3}
    graphs = [NeuralGraph.from_module(build(n)[0], **layout) for n in ("mlp", "cnn_mixed_kernels", "transformer")]
    batch = Batch.from_data_list([g.to_pyg() for g in graphs])
    assert batch.x.shape == (sum(g.num_nodes for g in graphs), 3)
    assert batch.edge_attr.shape == (sum(g.num_edges for g in graphs), 75)
    assert_round_trip(graphs[0], dict(build("mlp")[0].named_parameters()))


# ---------------------------------------------------------------------- bad input
class Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4)

    def forward(self, x):
        return self.rnn(x)[0]


def test_unsupported_module_is_named():
    with pytest.raises(ValueError, match=r"'rnn' of type GRU"):
        NeuralGraph.from_module(Unsupported())


def test_grouped_conv_and_weight_sharing_are_refused():
    with pytest.raises(ValueError, match="groups=2"):
        NeuralGraph.from_module(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))
    shared = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="called more than once"):
        NeuralGraph.from_module(nn.Sequential(shared, nn.ReLU(), shared))


def test_non_float_empty_and_mismatched_parameters():
    with pytest.raises(TypeError, match="dtype torch.int64"):
        NeuralGraph.from_parameters([torch.ones(3, 2, dtype=torch.long)])
    with pytest.raises(ValueError, match="empty parameter list"):
        NeuralGraph.from_parameters([])
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        NeuralGraph.from_parameters([("w", [1.0, 2.0])])
    g = NeuralGraph.from_parameters([torch.randn(4, 3)])
    with pytest.raises(ValueError, match="do not match this graph"):
        g.features([torch.randn(3, 4)])
    with pytest.raises(ValueError, match="edge_attr must have shape"):
        g.to_state_dict(edge_attr=torch.zeros(5, 1))


def test_linear_after_flatten_with_wrong_width_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(ValueError, match="not a multiple"):
        NeuralGraph.from_module(model)


def test_graph_module_imports_no_tracer_and_the_classmethods_delegate_to_build():
    """graph.py holds the data structure; encoders.build (imported by the package) provides the constructors."""
    import ast
    from pathlib import Path

    import encoders.graph
    from encoders.build import graph_from_module, graph_from_parameters

    tree = ast.parse(Path(encoders.graph.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"encoders.tracing", "encoders.chaining", "encoders.build"}, imported
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    for direct, method in ((graph_from_module(model, kernel_grid=(5, 5)),
                            NeuralGraph.from_module(model, kernel_grid=(5, 5))),
                           (graph_from_parameters(model.named_parameters(), slots=30),
                            NeuralGraph.from_parameters(model.named_parameters(), slots=30))):
        assert repr(direct) == repr(method) and direct.kernel_grid == method.kernel_grid
        assert direct.slots == method.slots
        assert torch.equal(direct.edge_index, method.edge_index) and torch.equal(direct.edge_attr, method.edge_attr)
