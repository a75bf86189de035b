"""Relational attention: multi-head attention whose queries, keys and values see the edge of each pair."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter, softmax, to_dense_adj, to_dense_batch

__all__ = ["ATTENTION_MODES", "RelationalAttention"]

ATTENTION_MODES = ("sparse", "dense")
FORWARD, BACKWARD, SELF, UNLINKED = range(4)  # how key j relates to query i


class RelationalAttention(MessagePassing):
    r"""Relational attention (Diao & Loynd 2023) on neural graphs, per head:

    .. math::
        q_{ij} = W_Q x_i + W_{QE} p_{ij}, \quad k_{ij} = W_K x_j + W_{KE} p_{ij}, \quad
        v_{ij} = (W_V x_j) \odot (W_{VE1} p_{ij}) + W_{VE2} p_{ij} \\
        \alpha_{ij} = \mathrm{softmax}_j(\langle q_{ij}, k_{ij} \rangle / \sqrt{d_h}), \qquad
        h_i = W_O \big\Vert_{heads} \textstyle\sum_j \alpha_{ij} v_{ij}

    Node ``i`` attends to one key per edge ``j -> i`` (pair feature ``p = e_ji + forward``), one
    per edge ``i -> j`` (``p = e_ij + backward``) and to itself (``p = self``), where the direction
    vectors are learned (in projection space). Parallel edges are separate keys.

    ``mode="sparse"``: only those ``2E + N`` pairs (``torch_geometric.utils.softmax`` over each
    query's pairs). Memory ``O((E + N) * d)``.
    ``mode="dense"``: additionally every other node ``j`` of the same graph, with the learned
    ``unlinked`` pair vector. Those keys share one pair vector, so their logits are one batched
    matrix product per graph (``to_dense_batch``, with a padding mask so padding never reaches
    real nodes) and their values a product with the softmax weights; memory
    ``O((E + N) * d + B * M^2 * heads)`` for ``B`` graphs of at most ``M`` nodes, instead of the
    ``O(B * M^2 * d)`` of materialising every pair feature.

    Shapes: ``x [N, d]``, ``edge_index [2, E]`` (source, target), ``e [E, d]``, ``batch [N]`` -> ``[N, d]``.
    """

    def __init__(self, channels: int, heads: int, mode: str = "sparse", dropout: float = 0.0) -> None:
        super().__init__(aggr=None, node_dim=0)
        if channels % heads:
            raise ValueError(f"hidden size {channels} is not divisible by {heads} heads")
        if mode not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {mode!r}; choose one of {ATTENTION_MODES}")
        self.heads, self.mode, self.scale = heads, mode, 1 / math.sqrt(channels // heads)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.pair = nn.Linear(channels, 4 * channels, bias=False)  # W_QE, W_KE, W_VE1, W_VE2
        pair_bias = torch.zeros(4, 4, channels)  # [how j relates to i, (qe, ke, ve1, ve2), d]
        pair_bias[:, 2] = 1.0  # values start as W_V x_j
        self.pair_bias = nn.Parameter(rearrange(pair_bias, "k p d -> k (p d)"))
        self.out = nn.Linear(channels, channels)
        self.attn_dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: Tensor, edge_index: Tensor, e: Tensor, batch: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        src, dst = edge_index
        loops = torch.arange(x.shape[0], device=x.device)
        pairs = torch.stack([torch.cat([src, dst, loops]), torch.cat([dst, src, loops])])  # (key j, query i)
        pe = self.pair(e)  # [E, 4d]
        bias = self.pair_bias
        pair = torch.cat([pe + bias[FORWARD], pe + bias[BACKWARD], bias[SELF].expand(len(loops), -1)])
        return self.out(self.propagate(pairs, q=q, k=k, v=v, pair=pair, batch=batch))

    def message(self, q_i: Tensor, k_j: Tensor, v_j: Tensor, pair: Tensor) -> tuple[Tensor, Tensor]:
        """Per pair: logits ``[P, heads]`` and values ``[P, heads, d / heads]``."""
        qe, ke, ve1, ve2 = pair.chunk(4, dim=-1)
        split = lambda t: rearrange(t, "p (h c) -> p h c", h=self.heads)  # noqa: E731
        logits = (split(q_i + qe) * split(k_j + ke)).sum(-1) * self.scale
        return logits, split(torch.addcmul(ve2, v_j, ve1))

    def aggregate(self, inputs: tuple[Tensor, Tensor], index: Tensor, edge_index_j: Tensor, dim_size: int,
                  q: Tensor, k: Tensor, v: Tensor, batch: Tensor) -> Tensor:
        """Softmax over each query's keys and the weighted sum of their values: ``[N, d]``."""
        logits, values = inputs
        if self.mode == "sparse":
            alpha = self.attn_dropout(softmax(logits, index, num_nodes=dim_size))
            out = scatter(alpha.unsqueeze(-1) * values, index, dim=0, dim_size=dim_size, reduce="sum")
            return rearrange(out, "n h c -> n (h c)")
        return self._with_unlinked_keys(logits, values, index, edge_index_j, dim_size, q, k, v, batch)

    def _with_unlinked_keys(self, logits: Tensor, values: Tensor, index: Tensor, keys: Tensor, num_nodes: int,
                            q: Tensor, k: Tensor, v: Tensor, batch: Tensor) -> Tensor:
        """Joint softmax over the pairs and all unlinked nodes of each query's graph."""
        qe, ke, ve1, ve2 = self.pair_bias[UNLINKED].chunk(4)
        num_graphs = int(batch.max()) + 1
        dense = lambda t: to_dense_batch(t, batch, batch_size=num_graphs)  # noqa: E731
        (q_u, mask), (k_u, _), (v_u, _) = dense(q + qe), dense(k + ke), dense(torch.addcmul(ve2, v, ve1))
        split = lambda t: rearrange(t, "b n (h c) -> b h n c", h=self.heads)  # noqa: E731
        unlinked = torch.einsum("bhic,bhjc->bhij", split(q_u), split(k_u)) * self.scale  # [B, H, M, M]
        linked = to_dense_adj(torch.stack([index, keys]), batch, max_num_nodes=mask.shape[1], batch_size=num_graphs)
        excluded = (linked > 0) | ~mask.unsqueeze(1)  # [B, i, j]: already a pair, or padding
        unlinked = unlinked.masked_fill(excluded.unsqueeze(1), float("-inf"))
        # one max per query over both sets (finite: every query has its self pair)
        peak = scatter(logits.detach(), index, dim=0, dim_size=num_nodes, reduce="max")  # [N, H]
        peak_unlinked = rearrange(unlinked.detach().amax(-1), "b h n -> b n h")[mask]
        peak = torch.maximum(peak, peak_unlinked)
        w_pairs = torch.exp(logits - peak[index])  # [P, H]
        w_unlinked = torch.exp(unlinked - rearrange(dense(peak)[0], "b n h -> b h n 1"))  # [B, H, M, M]
        total = scatter(w_pairs, index, dim=0, dim_size=num_nodes, reduce="sum") + rearrange(
            w_unlinked.sum(-1), "b h n -> b n h")[mask]
        w_pairs, w_unlinked = self.attn_dropout(w_pairs), self.attn_dropout(w_unlinked)
        out = scatter(w_pairs.unsqueeze(-1) * values, index, dim=0, dim_size=num_nodes, reduce="sum") + rearrange(
            w_unlinked @ split(v_u), "b h n c -> b n h c")[mask]
        return rearrange(out / total.unsqueeze(-1), "n h c -> n (h c)")
