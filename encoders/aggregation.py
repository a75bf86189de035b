"""Exact neighbour aggregation over a neural graph in ``O(N)``, using its bicliques.

A dense layer joins *every* source neuron to *every* target neuron, so the aggregate of neuron
states over a target's in-neighbours is the same reduction over the source block for all targets.
:class:`NeighbourAggregation` computes each biclique's reduction once and hands it to the targets;
only the one-to-one edges (residual, normalization) are visited individually. For a graph whose
edges are all dense this costs ``O(N * d)`` instead of ``O(E * d)``. The result equals
mean/min/max/std over ``edge_index`` exactly (tested against the direct computation).

Aggregates ignore edge features: messages are the neighbour's state. Layers that need
edge-dependent messages use the edge-level layers in :mod:`encoders.layers`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from encoders.graph import NeuralGraph

__all__ = ["AGGREGATES", "NeighbourAggregation"]

AGGREGATES = ("mean", "min", "max", "std")


class NeighbourAggregation(nn.Module):
    """Mean, min, max and std of neighbour states, for in-neighbours (messages along edges) and
    out-neighbours (messages against them), plus ``log(1 + degree)``.

    Built once per graph; index tensors are buffers (they follow ``.to(device)``). Nodes without
    neighbours in a direction get zeros for that direction.
    """

    def __init__(self, graph: NeuralGraph) -> None:
        super().__init__()
        self.num_nodes = graph.num_nodes
        self.num_bicliques = int(graph.biclique_src[1].max()) + 1 if graph.biclique_src.numel() else 0
        sparse = graph.edge_index[:, ~graph.edge_in_biclique]
        self.register_buffer("biclique_src", graph.biclique_src.clone())
        self.register_buffer("biclique_dst", graph.biclique_dst.clone())
        self.register_buffer("sparse", sparse.clone())
        deg_in = scatter(torch.ones(graph.num_edges), graph.edge_index[1], 0, dim_size=graph.num_nodes)
        deg_out = scatter(torch.ones(graph.num_edges), graph.edge_index[0], 0, dim_size=graph.num_nodes)
        self.register_buffer("log_degree", torch.stack([deg_in, deg_out], 1).log1p())

    def _direction(self, x: Tensor, members_from: Tensor, members_to: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        """Aggregates at ``members_to`` nodes of states at ``members_from`` nodes: ``[N, 4 * d]``.

        Sums (of states, squares and counts) travel together in one scatter, and so do maxima and
        minima (as maxima of ``[x, -x]``): four scatters instead of ten, with the same values, since
        each column is still reduced over the same rows in the same order."""
        n, b, d = self.num_nodes, self.num_bicliques, x.shape[1]
        node_from, clique_from = members_from
        node_to, clique_to = members_to
        gathered = x[node_from]
        ones = torch.ones_like(gathered[:, :1])
        sums = scatter(torch.cat([gathered, gathered * gathered, ones], 1), clique_from, 0, dim_size=b, reduce="sum")
        extremes = scatter(torch.cat([gathered, -gathered], 1), clique_from, 0, dim_size=b, reduce="max")
        index = torch.cat([node_to, dst])
        neighbours = x[src]
        direct = torch.cat([neighbours, neighbours * neighbours, torch.ones_like(neighbours[:, :1])], 1)
        total = scatter(torch.cat([sums[clique_to], direct]), index, 0, dim_size=n, reduce="sum")
        bounds = scatter(torch.cat([extremes[clique_to], torch.cat([neighbours, -neighbours], 1)]), index, 0,
                         dim_size=n, reduce="max")
        total, total_sq, count = total[:, :d], total[:, d:2 * d], total[:, 2 * d:]
        high, low = bounds[:, :d], -bounds[:, d:]
        has = count > 0
        count = count.clamp(min=1)
        mean = total / count
        std = (total_sq / count - mean * mean).clamp(min=0).add(1e-12).sqrt()
        return torch.cat([mean, low, high, std], 1) * has

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, d]`` -> ``[N, 8 * d + 2]``: (in: mean, min, max, std | out: same | log(1 + deg in, out))."""
        if x.shape[0] != self.num_nodes:
            raise ValueError(f"expected states of {self.num_nodes} nodes, got {x.shape[0]}")
        src, dst = self.sparse
        incoming = self._direction(x, self.biclique_src, self.biclique_dst, src, dst)
        outgoing = self._direction(x, self.biclique_dst, self.biclique_src, dst, src)
        return torch.cat([incoming, outgoing, self.log_degree.to(x.dtype)], 1)
