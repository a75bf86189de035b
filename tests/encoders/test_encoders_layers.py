"""The fast paths of the layers equal their plain definitions."""

from __future__ import annotations

import math

import torch
from torch_geometric.utils import scatter

from encoders.layers import FiLMPNAConv, RelationalAttention
from encoders.layers.relational_attention import BACKWARD, FORWARD, SELF, UNLINKED


def random_dag(num_nodes: int, num_edges: int, gen: torch.Generator) -> torch.Tensor:
    """Edges ``i -> j`` with ``i < j`` in random order, with a repeated (parallel) edge."""
    src = torch.randint(0, num_nodes - 1, (num_edges,), generator=gen)
    dst = src + 1 + (torch.rand(num_edges, generator=gen) * (num_nodes - 1 - src)).long()
    edge_index = torch.stack([src, dst])
    return torch.cat([edge_index, edge_index[:, :1]], dim=1)


def test_pna_aggregation_matches_scatter_reference():
    gen = torch.Generator().manual_seed(0)
    n, d = 12, 4
    edge_index = random_dag(n, 30, gen)
    conv = FiLMPNAConv(d, ["mean", "min", "max", "std", "sum"], ["identity", "amplification", "attenuation"],
                       avg_log_degree=1.3, flow="target_to_source").double()
    m = torch.randn(edge_index.shape[1], d, dtype=torch.float64, generator=gen)
    index = edge_index[0]  # target_to_source: aggregate at sources
    out = conv.aggregate(m, index, n)
    mean = scatter(m, index, 0, n, "mean")
    var = (scatter(m * m, index, 0, n, "mean") - mean**2).clamp(min=0)
    aggs = torch.cat([mean, scatter(m, index, 0, n, "min"), scatter(m, index, 0, n, "max"),
                      (var + 1e-5).sqrt() - math.sqrt(1e-5), scatter(m, index, 0, n, "sum")], 1)
    deg = torch.bincount(index, minlength=n).double().unsqueeze(1)
    amp = torch.log(deg + 1) / 1.3
    att = 1.3 / torch.log(deg.clamp(min=1) + 1)
    torch.testing.assert_close(out, torch.cat([aggs, aggs * amp, aggs * att], 1))


def naive_dense_attention(layer: RelationalAttention, x, edge_index, e):
    """Relational attention of one graph, every key of every query listed explicitly."""
    n, heads = x.shape[0], layer.heads
    q, k, v = layer.qkv(x).chunk(3, dim=-1)
    pe = layer.pair(e)
    out = []
    for i in range(n):
        keys, pairs = [], []
        for eid, (s, t) in enumerate(edge_index.t().tolist()):
            if t == i:
                keys.append(s)
                pairs.append(pe[eid] + layer.pair_bias[FORWARD])
            if s == i:
                keys.append(t)
                pairs.append(pe[eid] + layer.pair_bias[BACKWARD])
        linked = set(keys)
        keys.append(i)
        pairs.append(layer.pair_bias[SELF])
        for j in range(n):
            if j != i and j not in linked:
                keys.append(j)
                pairs.append(layer.pair_bias[UNLINKED])
        qe, ke, ve1, ve2 = torch.stack(pairs).chunk(4, dim=-1)
        logits = ((q[i] + qe).reshape(len(keys), heads, -1) * (k[keys] + ke).reshape(len(keys), heads, -1)).sum(-1)
        values = (v[keys] * ve1 + ve2).reshape(len(keys), heads, -1)
        out.append(((logits * layer.scale).softmax(0).unsqueeze(-1) * values).sum(0).reshape(-1))
    return layer.out(torch.stack(out))


def test_dense_attention_matches_explicit_pairs():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layer = RelationalAttention(8, heads=2, mode="dense").double()
    with torch.no_grad():
        layer.pair_bias.normal_(generator=gen)
    graphs = [(7, random_dag(7, 9, gen)), (4, random_dag(4, 3, gen))]
    x = torch.randn(11, 8, dtype=torch.float64, generator=gen)
    edge_index = torch.cat([graphs[0][1], graphs[1][1] + 7], dim=1)
    e = torch.randn(edge_index.shape[1], 8, dtype=torch.float64, generator=gen)
    batch = torch.tensor([0] * 7 + [1] * 4)
    out = layer(x, edge_index, e, batch)
    first = graphs[0][1].shape[1]
    expected = torch.cat([naive_dense_attention(layer, x[:7], graphs[0][1], e[:first]),
                          naive_dense_attention(layer, x[7:], graphs[1][1], e[first:])])
    torch.testing.assert_close(out, expected)
