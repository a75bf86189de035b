"""A slow, obviously correct NeuralGraphRule step: every element on its own, flat index maps.

The rule itself never materialises per-element neuron ids or contexts (factored row/column maps,
row blocks, in-place work); this reference does, so the two can be compared.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from encoders import NeuralGraph
from encoders.aggregation import NeighbourAggregation
from l2o import NeuralGraphRule
from l2o import features as F
from l2o.graph_rule import _EDGE_CHANNELS, _NODE_KINDS


def element_maps(graph: NeuralGraph) -> tuple[Tensor, Tensor, Tensor]:
    """Flat ``[P]`` source node, target node and kind of every element, read off the built graph."""
    source = torch.empty(graph.num_params, dtype=torch.long)
    target = torch.empty(graph.num_params, dtype=torch.long)
    kind = torch.empty(graph.num_params, dtype=torch.long)
    width = graph.edge_channels * graph.slots
    edge, column = graph.edge_elem_slot // width, graph.edge_elem_slot % width
    source[graph.edge_elem_pos], target[graph.edge_elem_pos] = graph.edge_index[0, edge], graph.edge_index[1, edge]
    channel = (column // graph.slots).clamp(max=_EDGE_CHANNELS - 1)
    kind[graph.edge_elem_pos] = _NODE_KINDS + graph.edge_kind[edge] * _EDGE_CHANNELS + channel
    node = graph.node_elem_slot // graph.node_channels
    source[graph.node_elem_pos] = target[graph.node_elem_pos] = node
    kind[graph.node_elem_pos] = (graph.node_elem_slot % graph.node_channels).clamp(max=_NODE_KINDS - 1)
    return source, target, kind


def reference_updates(rule: NeuralGraphRule, model: nn.Module, grads: list[Tensor], state: dict) -> list[Tensor]:
    """The updates of one step of ``rule`` for ``model``'s parameters (in ``model.parameters()`` order)."""
    params = [p.detach() for p in model.parameters()]
    graph = NeuralGraph.from_module(model)
    source, target, kind = element_maps(graph)
    new = F.update_stats(params, grads, state, rule.decays)
    step, time = new["step"], F.time_features(new["step"], rule.node_in.weight)
    feats = torch.cat([
        torch.cat([block.reshape(9, -1) for _, block in F.compact_features(p, g, F.tensor_stats(new, i), 2**40)], 1)
        for i, (p, g) in enumerate(zip(params, grads))
    ], 1).T.to(rule.node_in.weight.dtype)  # [P, 9]
    edge = graph.element_edge >= 0
    pooled, counts = torch.zeros(graph.num_nodes, 27, dtype=feats.dtype), torch.zeros(graph.num_nodes, 3)
    for k, (nodes, members) in enumerate([(target, edge), (source, edge), (source, ~edge)]):
        pooled[:, 9 * k:9 * k + 9].index_add_(0, nodes[members], feats[members])
        counts[:, k].index_add_(0, nodes[members], torch.ones(int(members.sum())))
    pooled = pooled / counts.clamp(min=1).repeat_interleave(9, 1)
    x = rule.node_in(torch.cat([pooled, time.expand(graph.num_nodes, -1)], 1))
    x = x + rule.role(graph.node_role) + rule.activation(graph.node_activation)
    x = x + rule.depth(graph.node_depth.clamp(max=rule.max_depth))
    for layer in rule.gnn:
        x = layer(x, NeighbourAggregation(graph.neighbourhood()))
    hidden = (feats @ rule.head_in.weight.T + rule.to_source(x)[source] + rule.to_target(x)[target]
              + rule.kind.weight[kind] + rule.head_time(time))
    out = rule.head_out(nn.functional.silu(hidden))
    mom = torch.cat([m[0].reshape(-1) for m in new["mom"]])
    rms = torch.cat([v.reshape(-1) for v in new["rms"]])
    adam = F.adam_direction(mom, rms, step, rule.decays)
    direction = (rule.skip + out[:, 0]) * adam if rule.gated else out[:, 0] + rule.skip * adam
    update = rule.step_mult * direction * torch.exp(rule.exp_mult * out[:, 1])
    return [u.reshape(p.shape) for u, p in zip(update.split([p.numel() for p in params]), params)]
