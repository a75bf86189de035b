"""One NG-T layer: relational attention, feed-forward, edge update (post-norm, as the relational transformer)."""

from __future__ import annotations

from torch import Tensor, nn

from encoders.dense import DenseLayout
from encoders.layers.edge_mlp import EdgeMLP
from encoders.layers.norm import Norm
from encoders.layers.relational_attention import RelationalAttention

__all__ = ["NGTransformerLayer"]


class NGTransformerLayer(nn.Module):
    r"""One layer of NG-T:

    .. math::
        x \leftarrow \mathrm{Norm}(x + \mathrm{RelationalAttention}(x, e)), \quad
        x \leftarrow \mathrm{Norm}(x + \mathrm{MLP}(x)) \\
        e_{ji} \leftarrow \mathrm{Norm}(e_{ji} + \mathrm{EdgeMLP}(e_{ji}, x_j, x_i))

    The edge update reads the edge and both end nodes in order (source, target). In a neural graph
    (a DAG) the reverse pair of an edge carries no weight, so the relational transformer's
    ``e_ji`` term would be a constant and is left out. ``edge_update=False`` keeps edges fixed.

    Shapes: ``x [N, d]``, ``edge_index [2, E]``, ``e [E, d]``, ``batch [N]`` -> ``(x' [N, d], e' [E, d])``.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        *,
        mode: str = "sparse",
        ff_ratio: int = 2,
        edge_update: bool = True,
        norm: str = "layer",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.attention = RelationalAttention(channels, heads, mode, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(channels, ff_ratio * channels), nn.SiLU(), nn.Linear(ff_ratio * channels, channels)
        )
        self.norm_attention, self.norm_mlp = Norm(norm, channels), Norm(norm, channels)
        self.edge_mlp = EdgeMLP(channels, ff_ratio * channels, channels) if edge_update else None
        self.edge_norm = Norm(norm, channels) if edge_update else None
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: Tensor, edge_index: Tensor, e: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        x = self.norm_attention(x + self.dropout(self.attention(x, edge_index, e, batch)), batch)
        x = self.norm_mlp(x + self.dropout(self.mlp(x)), batch)
        if self.edge_mlp is not None:
            e = self.edge_norm(e + self.dropout(self.edge_mlp(x, edge_index, e)), batch[edge_index[0]])
        return x, e

    def forward_dense(self, x: Tensor, e: Tensor, layout: DenseLayout) -> tuple[Tensor, Tensor]:
        """The same layer on a same-architecture batch: ``x [B, N, d]``, ``e [B, E, d]`` -> same shapes."""
        x = self.norm_attention.forward_dense(x + self.dropout(self.attention.forward_dense(x, e, layout)))
        x = self.norm_mlp.forward_dense(x + self.dropout(self.mlp(x)))
        if self.edge_mlp is not None:
            e = self.edge_norm.forward_dense(e + self.dropout(self.edge_mlp.forward_dense(x, e, layout)))
        return x, e
