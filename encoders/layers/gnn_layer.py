"""One NG-GNN layer: FiLM-PNA messages in both edge directions, node update, optional edge update."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from encoders.dense import DenseLayout
from encoders.layers.edge_mlp import EdgeMLP
from encoders.layers.film_pna import FiLMPNAConv
from encoders.layers.norm import Norm

__all__ = ["FILMS", "NGGNNLayer"]

FILMS = ("linear", "elementwise")


class NGGNNLayer(nn.Module):
    r"""One layer of NG-GNN (PNA with FiLM edge modulation and edge updates).

    .. math::
        [\gamma^{in}, \beta^{in}, \gamma^{out}, \beta^{out}]_{ji} = \mathrm{FiLM}(e_{ji}) \\
        a^{in}_i = \mathrm{PNA}_{j \to i}(\gamma^{in} \odot (W x_i + W' x_j) + \beta^{in}), \quad
        a^{out}_j = \mathrm{PNA}_{j \to i \text{ reversed}}(\dots) \\
        x' = x + \mathrm{Dropout}(\mathrm{SiLU}(\mathrm{Norm}(W_u [x \Vert a^{in} \Vert a^{out}]))) \\
        e' = e + \mathrm{Dropout}(\mathrm{Norm}(\mathrm{EdgeMLP}(e, x'_{src}, x'_{dst})))

    ``film="linear"``: ``FiLM(e) = W_f e + b_f`` (the reference; ``E * d * 4d`` per layer).
    ``film="elementwise"``: ``FiLM(e) = w_f * [e, e, e, e] + b_f`` (``O(E * d)``); with
    ``edge_update=False`` the layer then does no per-edge matrix product at all, only gathers,
    elementwise products and scatters.

    ``avg_log_degree``: mean ``log(deg + 1)`` of in- and out-degrees in representative graphs
    (normalises the degree scalers).

    Shapes: ``x [N, d]``, ``edge_index [2, E]``, ``e [E, d]``, ``batch [N]`` -> ``(x' [N, d], e' [E, d])``.
    """

    def __init__(
        self,
        channels: int,
        *,
        aggregators: Sequence[str],
        scalers: Sequence[str],
        avg_log_degree: tuple[float, float],
        film: str = "linear",
        edge_update: bool = True,
        norm: str = "layer",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if film not in FILMS:
            raise ValueError(f"unknown film {film!r}; choose one of {FILMS}")
        if film == "linear":
            self.film = nn.Linear(channels, 4 * channels)
        else:
            self.film_weight = nn.Parameter(torch.ones(4, channels))
            self.film_bias = nn.Parameter(torch.zeros(4, channels))
        self.film_kind = film
        self.incoming = FiLMPNAConv(channels, aggregators, scalers, avg_log_degree[0], flow="source_to_target")
        self.outgoing = FiLMPNAConv(channels, aggregators, scalers, avg_log_degree[1], flow="target_to_source")
        self.update = nn.Linear(channels + self.incoming.out_channels + self.outgoing.out_channels, channels)
        self.norm = Norm(norm, channels)
        self.edge_mlp = EdgeMLP(channels, channels, channels) if edge_update else None
        self.edge_norm = Norm(norm, channels) if edge_update else None
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def modulation(self, e: Tensor) -> tuple[Tensor, ...]:
        """``e [..., d]`` -> ``(gamma_in, beta_in, gamma_out, beta_out)``, each ``[..., d]``."""
        if self.film_kind == "linear":
            return self.film(e).chunk(4, dim=-1)
        return torch.addcmul(self.film_bias, e.unsqueeze(-2), self.film_weight).unbind(-2)

    def forward(self, x: Tensor, edge_index: Tensor, e: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        gamma_in, beta_in, gamma_out, beta_out = self.modulation(e)
        a_in = self.incoming(x, edge_index, gamma_in, beta_in)
        a_out = self.outgoing(x, edge_index, gamma_out, beta_out)
        h = self.update(torch.cat([x, a_in, a_out], dim=-1))
        x = x + self.dropout(nn.functional.silu(self.norm(h, batch)))
        if self.edge_mlp is not None:
            e = e + self.dropout(self.edge_norm(self.edge_mlp(x, edge_index, e), batch[edge_index[0]]))
        return x, e

    def forward_dense(self, x: Tensor, e: Tensor, layout: DenseLayout) -> tuple[Tensor, Tensor]:
        """The same layer on a same-architecture batch: ``x [B, N, d]``, ``e [B, E, d]`` -> same shapes."""
        gamma_in, beta_in, gamma_out, beta_out = self.modulation(e)
        a_in = self.incoming.forward_dense(x, gamma_in, beta_in, layout)
        a_out = self.outgoing.forward_dense(x, gamma_out, beta_out, layout)
        h = self.update(torch.cat([x, a_in, a_out], dim=-1))
        x = x + self.dropout(nn.functional.silu(self.norm.forward_dense(h)))
        if self.edge_mlp is not None:
            e = e + self.dropout(self.edge_norm.forward_dense(self.edge_mlp.forward_dense(x, e, layout)))
        return x, e
