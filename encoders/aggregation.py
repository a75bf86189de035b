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

from encoders.builder import Neighbourhood

__all__ = ["AGGREGATES", "NeighbourAggregation"]

AGGREGATES = ("mean", "min", "max", "std")


class NeighbourAggregation(nn.Module):
    """Mean, min, max and std of neighbour states, for in-neighbours (messages along edges) and
    out-neighbours (messages against them), plus ``log(1 + degree)``.

    Built once per graph from its :class:`~encoders.builder.Neighbourhood`
    (``NeuralGraph.neighbourhood()``, or ``GraphBuilder.neighbourhood()`` without building the
    graph); index tensors are buffers (they follow ``.to(device)``). Nodes without
    neighbours in a direction get zeros for that direction.
    """

    def __init__(self, neighbourhood: Neighbourhood) -> None:
        super().__init__()
        n = neighbourhood
        self.num_nodes = n.num_nodes
        self.num_bicliques = int(n.biclique_src[1].max()) + 1 if n.biclique_src.numel() else 0
        self.register_buffer("biclique_src", n.biclique_src.clone())
        self.register_buffer("biclique_dst", n.biclique_dst.clone())
        self.register_buffer("sparse", n.sparse_edges.clone())
        self.gathers = {}  # per direction: whether each node receives at most one contribution
        for name, targets in (("in", torch.cat([n.biclique_dst[0], n.sparse_edges[1]])),
                              ("out", torch.cat([n.biclique_src[0], n.sparse_edges[0]]))):
            self.register_buffer(f"{name}_targets", targets)
            counts = torch.bincount(targets, minlength=self.num_nodes)
            self.gathers[name] = bool((counts <= 1).all())
            # for project(): contributions that are their node's only one, and the others with the
            # compact slot of their node among the nodes that have several
            single = counts[targets] == 1
            shared = counts > 1
            slot = torch.cumsum(shared, 0) - 1
            self.register_buffer(f"{name}_single", single.nonzero().flatten(), persistent=False)
            self.register_buffer(f"{name}_single_targets", targets[single], persistent=False)
            self.register_buffer(f"{name}_shared", (~single).nonzero().flatten(), persistent=False)
            self.register_buffer(f"{name}_shared_slot", slot[targets[~single]], persistent=False)
            self.register_buffer(f"{name}_shared_nodes", shared.nonzero().flatten(), persistent=False)
        self.register_buffer("log_degree", n.degrees.log1p())

    def _direction(self, x: Tensor, members_from: Tensor, members_to: Tensor, src: Tensor, dst: Tensor,
                   direction: str) -> Tensor:
        """Aggregates at ``members_to`` nodes of states at ``members_from`` nodes: ``[N, 4 * d]``.

        Sums (of states, squares and counts) travel together in one scatter, and so do maxima and
        minima (as maxima of ``[x, -x]``). Where every node has at most one contribution (one
        biclique, no one-to-one edge: plain MLPs and CNNs) the node-level scatters are gathers. The
        values are those of the ten separate scatters, bit for bit: each column is reduced over the
        same rows in the same order."""
        sums, extremes = self._clique_reductions(x, members_from)
        neighbours = x[src]
        clique_to = members_to[1]
        total = self._combine(torch.cat([sums[clique_to], _sum_terms(neighbours)]), "sum", direction)
        bounds = self._combine(torch.cat([extremes[clique_to], _max_terms(neighbours)]), "max", direction)
        return _statistics(total, bounds)

    def _clique_reductions(self, x: Tensor, members_from: Tensor) -> tuple[Tensor, Tensor]:
        """Per biclique, the sums (of states, squares, counts: ``[B, 2 d + 1]``) and the maxima (of
        ``[x, -x]``: ``[B, 2 d]``) over its ``members_from`` nodes."""
        node_from, clique_from = members_from
        gathered = x[node_from]
        b = self.num_bicliques
        return (scatter(_sum_terms(gathered), clique_from, 0, dim_size=b, reduce="sum"),
                scatter(_max_terms(gathered), clique_from, 0, dim_size=b, reduce="max"))

    def _projected_direction(self, x: Tensor, members_from: Tensor, members_to: Tensor, src: Tensor,
                             direction: str, weight: Tensor) -> Tensor:
        """``_direction(...) @ weight.T`` (``weight [out, 4 d]``) -> ``[N, out]``.

        A node with one contribution (one biclique, or one one-to-one edge) has that contribution's
        aggregates, so its projection is computed per biclique or per edge and gathered: ``B +
        E_sparse`` rows through the ``4 d``-wide product instead of one per node. Nodes with several
        contributions (a residual stream fed by a layer and a skip edge) are reduced and projected
        in a compact ``[M, 4 d]`` block of their own. Plain MLPs and CNNs have no such node."""
        sums, extremes = self._clique_reductions(x, members_from)
        neighbours = x[src]
        edge_sums, edge_maxima = _sum_terms(neighbours), _max_terms(neighbours)
        per_clique = _statistics(sums, extremes) @ weight.T
        per_edge = _statistics(edge_sums, edge_maxima) @ weight.T
        single = getattr(self, f"{direction}_single")
        out = x.new_zeros(self.num_nodes, weight.shape[0]).index_copy(
            0, getattr(self, f"{direction}_single_targets"), torch.cat([per_clique[members_to[1]], per_edge])[single])
        shared = getattr(self, f"{direction}_shared")
        if shared.numel():
            nodes = getattr(self, f"{direction}_shared_nodes")
            slot = getattr(self, f"{direction}_shared_slot")
            total = scatter(torch.cat([sums[members_to[1]], edge_sums])[shared], slot, 0, dim_size=nodes.numel(),
                            reduce="sum")
            bounds = scatter(torch.cat([extremes[members_to[1]], edge_maxima])[shared], slot, 0,
                             dim_size=nodes.numel(), reduce="max")
            out = out.index_copy(0, nodes, _statistics(total, bounds) @ weight.T)
        return out

    def _combine(self, contributions: Tensor, reduce: str, direction: str) -> Tensor:
        """``scatter(contributions, targets, reduce)`` over the nodes (``[N, c]``; 0 where none)."""
        targets = getattr(self, f"{direction}_targets")
        if not self.gathers[direction]:
            return scatter(contributions, targets, 0, dim_size=self.num_nodes, reduce=reduce)
        # every node has at most one contribution: a gather. + 0.0 because a scatter-sum onto zeros
        # turns -0.0 into +0.0
        return contributions.new_zeros(self.num_nodes, contributions.shape[1]).index_copy(
            0, targets, contributions + 0.0 if reduce == "sum" else contributions)

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, d]`` -> ``[N, 8 * d + 2]``: (in: mean, min, max, std | out: same | log(1 + deg in, out))."""
        if x.shape[0] != self.num_nodes:
            raise ValueError(f"expected states of {self.num_nodes} nodes, got {x.shape[0]}")
        src, dst = self.sparse
        incoming = self._direction(x, self.biclique_src, self.biclique_dst, src, dst, "in")
        outgoing = self._direction(x, self.biclique_dst, self.biclique_src, dst, src, "out")
        return torch.cat([incoming, outgoing, self.log_degree.to(x.dtype)], 1)

    def project(self, x: Tensor, weight: Tensor) -> Tensor:
        """``forward(x) @ weight.T`` for ``weight [out, 8 d + 2]``: ``[N, out]``, without building
        the ``[N, 8 d + 2]`` aggregates of nodes with one contribution per direction (see
        :meth:`_projected_direction`; on plain MLPs and CNNs that is every node, and the product is
        several times cheaper). Equal to the product up to float rounding (tested)."""
        if x.shape[0] != self.num_nodes:
            raise ValueError(f"expected states of {self.num_nodes} nodes, got {x.shape[0]}")
        d = x.shape[1]
        if weight.shape[1] != 8 * d + 2:
            raise ValueError(f"expected a weight of {8 * d + 2} columns for {d}-wide states, got {weight.shape[1]}")
        src, dst = self.sparse
        incoming = self._projected_direction(x, self.biclique_src, self.biclique_dst, src, "in", weight[:, :4 * d])
        outgoing = self._projected_direction(x, self.biclique_dst, self.biclique_src, dst, "out",
                                             weight[:, 4 * d:8 * d])
        return incoming + outgoing + self.log_degree.to(x.dtype) @ weight[:, 8 * d:].T


def _sum_terms(x: Tensor) -> Tensor:
    """``[x, x^2, 1]``: what the sums reduce (states, squares and counts travel in one scatter)."""
    return torch.cat([x, x * x, torch.ones_like(x[:, :1])], 1)


def _max_terms(x: Tensor) -> Tensor:
    """``[x, -x]``: maxima and minima in one max-reduction."""
    return torch.cat([x, -x], 1)


def _statistics(total: Tensor, bounds: Tensor) -> Tensor:
    """Reduced ``[x, x^2, 1]`` sums ``[M, 2 d + 1]`` and ``[x, -x]`` maxima ``[M, 2 d]`` -> mean,
    min, max and std ``[M, 4 d]`` (zeros where the count is 0, as scatter's fill)."""
    d = bounds.shape[1] // 2
    total, total_sq, count = total[:, :d], total[:, d:2 * d], total[:, 2 * d:]
    high, low = bounds[:, :d], -bounds[:, d:]
    has = count > 0
    count = count.clamp(min=1)
    mean = total / count
    std = (total_sq / count - mean * mean).clamp(min=0).add(1e-12).sqrt()
    return torch.where(has, torch.cat([mean, low, high, std], 1), 0.0)  # +0.0, as scatter's fill, where empty

