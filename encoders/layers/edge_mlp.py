"""A per-edge MLP that reads the edge and both of its end nodes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from encoders.dense import DenseLayout

__all__ = ["EdgeMLP"]


class EdgeMLP(nn.Module):
    r"""``out_ji = W_2 SiLU(W_e e_ji + W_s x_j + W_t x_i + b) + b_2`` for every edge ``j -> i``.

    The node terms are projected once per node and gathered, so the cost is two per-edge matrix
    products (``E * channels * hidden`` and ``E * hidden * out_channels``) plus gathers.
    Shapes: ``x [N, channels]``, ``edge_index [2, E]`` (source, target), ``e [E, channels]`` ->
    ``[E, out_channels]``.
    """

    def __init__(self, channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.edge = nn.Linear(channels, hidden)
        self.source = nn.Linear(channels, hidden, bias=False)
        self.target = nn.Linear(channels, hidden, bias=False)
        self.out = nn.Linear(hidden, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor, e: Tensor) -> Tensor:
        src, dst = edge_index
        h = self.edge(e) + self.source(x)[src] + self.target(x)[dst]
        return self.out(nn.functional.silu(h))

    def forward_dense(self, x: Tensor, e: Tensor, layout: DenseLayout) -> Tensor:
        """The same map on a same-architecture batch: ``x [B, N, channels]``, ``e [B, E, channels]``
        -> ``[B, E, out_channels]``; end-node terms are broadcast over each block, not gathered."""
        h, source, target = self.edge(e), self.source(x), self.target(x)
        blocks = [h_b + source[:, None, block.src] + target[:, block.dst, None]
                  for block, h_b in zip(layout.blocks, layout.split(h))]
        return self.out(nn.functional.silu(torch.cat([b.flatten(1, 2) for b in blocks], dim=1)))
