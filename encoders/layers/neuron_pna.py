"""One neuron-level message-passing layer: PNA-style aggregates of neighbour states, no edge work."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from encoders.aggregation import NeighbourAggregation

__all__ = ["NeuronPNALayer"]


class NeuronPNALayer(nn.Module):
    """``x' = LayerNorm(x + W_2 SiLU(W_1 [x || agg_in(W_m x) || agg_out(W_m x) || log(1 + deg)]))``.

    ``agg_in``/``agg_out`` are mean, min, max and std over in- and out-neighbours
    (:class:`~encoders.aggregation.NeighbourAggregation`, exact and ``O(N)`` on neural graphs), so
    the layer is equivariant to node permutations that preserve the graph. Messages depend on the
    neighbour's state only; the cost is ``O(N * d^2)`` whatever the number of weights, which is
    what a learned optimizer can afford on large networks.

    Shapes: ``x [N, d]`` -> ``[N, d]``; ``aggregation`` belongs to the graph of ``x``.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.message = nn.Linear(hidden, hidden)
        self.update = nn.Sequential(nn.Linear(hidden * 9 + 2, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, aggregation: NeighbourAggregation) -> Tensor:
        aggregated = aggregation(self.message(x))
        return self.norm(x + self.update(torch.cat([x, aggregated], dim=-1)))
