"""One neuron-level message-passing layer: PNA-style aggregates of neighbour states, no edge work."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from encoders.aggregation import NeighbourAggregation

__all__ = ["NeuronPNALayer"]


class NeuronPNALayer(nn.Module):
    """``x' = LayerNorm(x + W_2 SiLU(W_1 [x || agg_in(W_m x) || agg_out(W_m x) || log(1 + deg)]))``.

    ``agg_in``/``agg_out`` are mean, min, max and std over in- and out-neighbours
    (:class:`~encoders.aggregation.NeighbourAggregation`, exact and ``O(N)`` on neural graphs), so
    the layer is equivariant to node permutations that preserve the graph. Messages depend on the
    neighbour's state only; the cost is ``O(N * d^2)`` whatever the number of weights, which is
    what a learned optimizer can afford on large networks.

    The first linear layer of the update reads the aggregates through
    :meth:`~encoders.aggregation.NeighbourAggregation.project`, which on plain MLPs and CNNs never
    builds the ``[N, 8 d + 2]`` aggregates (several times cheaper, the same values up to float
    rounding); :meth:`reference` is the formula above, written out (tested against each other).

    Shapes: ``x [N, d]`` -> ``[N, d]``; ``aggregation`` belongs to the graph of ``x``.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.message = nn.Linear(hidden, hidden)
        self.update = nn.Sequential(nn.Linear(hidden * 9 + 2, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, aggregation: NeighbourAggregation) -> Tensor:
        first, activation, second = self.update
        d = x.shape[1]
        own = F.linear(x, first.weight[:, :d], first.bias)
        hidden = own + aggregation.project(self.message(x), first.weight[:, d:])
        return self.norm(x + second(activation(hidden)))

    def reference(self, x: Tensor, aggregation: NeighbourAggregation) -> Tensor:
        """:meth:`forward`, computed as the class docstring's formula reads (the slow path)."""
        aggregated = aggregation(self.message(x))
        return self.norm(x + self.update(torch.cat([x, aggregated], dim=-1)))
