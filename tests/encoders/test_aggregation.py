"""The O(N) biclique aggregation equals aggregation over every edge (the slow, obvious reference)."""

import pytest
import torch
from torch_geometric.utils import scatter

from encoders import NeuralGraph
from encoders.aggregation import NeighbourAggregation
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
