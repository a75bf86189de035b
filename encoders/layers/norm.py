"""Normalization that never mixes graphs of a mini-batch."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn.norm import GraphNorm

__all__ = ["NORMS", "Norm"]

NORMS = ("layer", "graph", "none")


class Norm(nn.Module):
    """``"layer"``: LayerNorm of each row; ``"graph"``: ``GraphNorm`` over the rows of each graph;
    ``"none"``: identity. Shapes: ``x [R, channels]``, ``batch [R]`` (graph of each row) -> ``[R, channels]``.

    Neither kind looks at other graphs, so a graph's output never depends on its batch mates.
    """

    def __init__(self, kind: str, channels: int) -> None:
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")
        self.kind = kind
        self.norm = {"layer": nn.LayerNorm(channels), "graph": GraphNorm(channels), "none": nn.Identity()}[kind]

    def forward(self, x: Tensor, batch: Tensor) -> Tensor:
        return self.norm(x, batch) if self.kind == "graph" else self.norm(x)

    def forward_dense(self, x: Tensor) -> Tensor:
        """``x [B, R, channels]``, the rows of each graph along axis 1 -> ``[B, R, channels]``."""
        if self.kind != "graph":
            return self.norm(x)
        norm = self.norm  # GraphNorm's formula, over each graph's rows at once
        centred = x - x.mean(dim=1, keepdim=True) * norm.mean_scale
        std = (centred.square().mean(dim=1, keepdim=True) + norm.eps).sqrt()
        return norm.weight * centred / std + norm.bias
