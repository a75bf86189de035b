"""The O(N) biclique aggregation equals aggregation over every edge (the slow, obvious reference)."""

import pytest
import torch
from torch_geometric.utils import scatter

from encoders import NeuralGraph
from encoders.aggregation import NeighbourAggregation
from encoders.layers.neuron_pna import NeuronPNALayer
from encoders.symmetry import equivariance_error, random_hidden_permutation
from tests.encoders.networks import NETWORKS, build


def reference(x: torch.Tensor, edge_index: torch.Tensor, n: int) -> torch.Tensor:
    out = []
    for src, dst in (edge_index, edge_index.flip(0)):
        ones = torch.ones(len(dst), dtype=x.dtype)
        count = scatter(ones, dst, 0, dim_size=n).unsqueeze(1)
        mean = scatter(x[src], dst, 0, dim_size=n, reduce="mean")
        low = scatter(x[src], dst, 0, dim_size=n, reduce="min")
        high = scatter(x[src], dst, 0, dim_size=n, reduce="max")
        var = scatter(x[src] ** 2, dst, 0, dim_size=n, reduce="mean") - mean**2
        std = (var.clamp(min=0) + 1e-12).sqrt() * (count > 0)
        out += [mean, low, high, std]
    return torch.cat(out, 1)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_biclique_aggregation_matches_edge_aggregation(name):
    g = NeuralGraph.from_module(build(name)[0])
    x = torch.randn(g.num_nodes, 5, dtype=torch.float64)
    fast = NeighbourAggregation(g.neighbourhood()).double()(x)
    torch.testing.assert_close(fast[:, :-2], reference(x, g.edge_index, g.num_nodes))
    assert g.edge_in_biclique.any()


def test_aggregation_is_permutation_equivariant():
    g = NeuralGraph.from_module(build("resnet")[0])
    agg = NeighbourAggregation(g.neighbourhood()).double()
    sigma = random_hidden_permutation(g, torch.Generator().manual_seed(0))
    x = torch.randn(g.num_nodes, 4, dtype=torch.float64)
    err = equivariance_error(lambda x, e: (agg(x), None, None), g, sigma, x=x, edge_attr=g.edge_attr.double())
    assert err.max() < 1e-12


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_projection_matches_aggregates_times_weight(name):
    """project() (per biclique where every node has one contribution) == forward() @ weight.T."""
    g = NeuralGraph.from_module(build(name)[0])
    agg = NeighbourAggregation(g.neighbourhood()).double()
    x = torch.randn(g.num_nodes, 5, dtype=torch.float64)
    weight = torch.randn(7, 8 * 5 + 2, dtype=torch.float64)
    torch.testing.assert_close(agg.project(x, weight), agg(x) @ weight.T)


def test_projection_names_a_wrong_weight():
    g = NeuralGraph.from_module(build("mlp")[0])
    agg = NeighbourAggregation(g.neighbourhood())
    with pytest.raises(ValueError, match="42 columns"):
        agg.project(torch.randn(g.num_nodes, 5), torch.randn(3, 40))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_neuron_pna_layer_matches_its_formula_and_is_equivariant(name):
    """The layer's fast forward (through project) equals its reference formula, and both commute
    with hidden-neuron permutations."""
    g = NeuralGraph.from_module(build(name)[0])
    agg = NeighbourAggregation(g.neighbourhood()).double()
    torch.manual_seed(0)
    layer = NeuronPNALayer(6).double()
    x = torch.randn(g.num_nodes, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x, agg), layer.reference(x, agg))
    sigma = random_hidden_permutation(g, torch.Generator().manual_seed(1))
    err = equivariance_error(lambda x, e: (layer(x, agg), None, None), g, sigma, x=x, edge_attr=g.edge_attr.double())
    assert err.max() < 1e-12
