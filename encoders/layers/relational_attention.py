"""Relational attention: multi-head attention whose queries, keys and values see the edge of each pair."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter, softmax, to_dense_adj, to_dense_batch

from encoders.dense import DenseLayout

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

    def forward_dense(self, x: Tensor, e: Tensor, layout: DenseLayout) -> Tensor:
        """The same attention on a same-architecture batch: ``x [B, N, d]``, ``e [B, E, d]`` -> ``[B, N, d]``.

        Per block, forward pairs (query = target, keys along the source axis) and backward pairs
        (query = source, keys along the target axis) are ``[B, D, S, heads]`` logits by
        broadcasting; each query's softmax joins its blocks, its self pair and (``mode="dense"``)
        its unlinked nodes through one shared maximum and sum. Dropout acts on the unnormalized
        weights, the same in law as on the normalized ones.
        """
        split = lambda t: rearrange(t, "... (h c) -> ... h c", h=self.heads)  # noqa: E731
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        pe = self.pair(e)  # [B, E, 4d]

        def pairs(queries: Tensor, keys: Tensor, values: Tensor, pair: Tensor) -> tuple[Tensor, Tensor]:
            qe, ke, ve1, ve2 = pair.chunk(4, dim=-1)
            logits = (split(queries + qe) * split(keys + ke)).sum(-1) * self.scale
            return logits, split(torch.addcmul(ve2, values, ve1))

        groups = []  # (logits, values, the query nodes' range, the key axis)
        for block, pair in zip(layout.blocks, layout.split(pe)):  # pair [B, D, S, 4d]
            at_dst, at_src = (slice(None), block.dst, None), (slice(None), None, block.src)
            groups.append((*pairs(q[at_dst], k[at_src], v[at_src], pair + self.pair_bias[FORWARD]), block.dst, 2))
            groups.append((*pairs(q[at_src], k[at_dst], v[at_dst], pair + self.pair_bias[BACKWARD]), block.src, 1))
        self_logits, self_values = pairs(q, k, v, self.pair_bias[SELF])  # [B, N, H], [B, N, H, c]
        unlinked = self._unlinked_dense(q, k, v, layout) if self.mode == "dense" else None

        def per_node(make: Callable[[Tensor, Tensor, slice, int], Tensor], fill: float,
                     join: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
            """``join`` of ``make(logits or weights, values, nodes, axis)`` over the forward groups (one per
            target node) and the backward groups (one per source node), as ``[B, N, ...]``."""
            sides = []
            for axis in (2, 1):
                pieces = [(nodes, make(lg, val, nodes, ax)) for lg, val, nodes, ax in groups if ax == axis]
                shape = pieces[0][1].shape[2:]
                sides.append(layout.gather_nodes([(n, t.flatten(2)) for n, t in pieces], fill).unflatten(2, shape))
            return join(*sides)

        peak = torch.maximum(per_node(lambda lg, _, __, axis: lg.detach().amax(axis), float("-inf"), torch.maximum),
                             self_logits.detach())
        if unlinked is not None:
            peak = torch.maximum(peak, rearrange(unlinked[0].detach().amax(-1), "b h n -> b n h"))

        # each group's unnormalized weights, computed once for the sums and the weighted values
        groups = [(torch.exp(lg - peak[:, nodes].unsqueeze(axis)), val, nodes, axis) for lg, val, nodes, axis in groups]
        total = per_node(lambda w, _, __, axis: w.sum(axis), 0.0, torch.add)
        w_self = torch.exp(self_logits - peak)
        total = total + w_self
        out = per_node(lambda w, val, _, axis: (self.attn_dropout(w).unsqueeze(-1) * val).sum(axis), 0.0, torch.add)
        out = out + self.attn_dropout(w_self).unsqueeze(-1) * self_values
        if unlinked is not None:
            logits, values = unlinked  # [B, H, N, N], [B, H, N, c]
            w = torch.exp(logits - rearrange(peak, "b n h -> b h n 1"))
            total = total + rearrange(w.sum(-1), "b h n -> b n h")
            out = out + rearrange(self.attn_dropout(w) @ values, "b h n c -> b n h c")
        return self.out(rearrange(out / total.unsqueeze(-1), "b n h c -> b n (h c)"))

    def _unlinked_dense(self, q: Tensor, k: Tensor, v: Tensor, layout: DenseLayout) -> tuple[Tensor, Tensor]:
        """Logits ``[B, H, N, N]`` (``-inf`` where linked) and values ``[B, H, N, c]`` of unlinked pairs."""
        qe, ke, ve1, ve2 = self.pair_bias[UNLINKED].chunk(4)
        split = lambda t: rearrange(t, "b n (h c) -> b h n c", h=self.heads)  # noqa: E731
        logits = torch.einsum("bhic,bhjc->bhij", split(q + qe), split(k + ke)) * self.scale
        return logits.masked_fill(layout.linked, float("-inf")), split(torch.addcmul(ve2, v, ve1))
