"""Hidden-neuron permutations and the one equivariance check every symmetry test uses.

A permutation ``sigma: [N]`` maps old node ids to new ones (``sigma[n]`` is where node ``n`` goes).
:func:`random_hidden_permutation` draws one that moves only hidden neurons, within their
permutation groups (a layer; layers tied by residual or normalization edges move together;
attention neurons move within their head). Such a ``sigma`` maps the graph's structure onto
itself, so permuting *features* alone gives the graph of the permuted network, and writing them
back (:meth:`NeuralGraph.to_state_dict`) gives the permuted network's parameters, which compute the
same function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from encoders.graph import NeuralGraph

__all__ = [
    "EquivarianceError",
    "equivariance_error",
    "permute_edges",
    "permute_flat",
    "permute_nodes",
    "random_hidden_permutation",
]


def random_hidden_permutation(graph: NeuralGraph, generator: torch.Generator | None = None) -> Tensor:
    """A random symmetry ``sigma: [N]`` of ``graph`` that moves hidden neurons only.

    Each permutation group draws one reordering and applies it to every unit in the group (a
    layer, the layers tied to it, or the attention heads tied together).
    """
    sigma = torch.arange(graph.num_nodes)
    groups = graph.node_group.unique()
    for group in groups[groups >= 0].tolist():
        members = (graph.node_group == group).nonzero().squeeze(1)
        units = graph.node_unit[members]
        size = int((units == units[0]).sum())
        order = torch.randperm(size, generator=generator)
        for unit in units.unique().tolist():
            nodes = members[units == unit]
            sigma[nodes] = nodes[order]
    return sigma


def _edge_keys(graph: NeuralGraph, src: Tensor, dst: Tensor) -> Tensor:
    return (src * graph.num_nodes + dst) * 8 + graph.edge_kind


def edge_permutation(graph: NeuralGraph, sigma: Tensor) -> Tensor:
    """``[E]``: where each edge goes under the node permutation ``sigma``.

    Raises ``ValueError`` if ``sigma`` is not a symmetry of the graph's structure.
    """
    src, dst = graph.edge_index
    keys = _edge_keys(graph, src, dst)
    order = keys.argsort()
    moved = _edge_keys(graph, sigma[src], sigma[dst])
    found = torch.searchsorted(keys[order], moved).clamp(max=len(keys) - 1)
    target = order[found]
    if not torch.equal(keys[target], moved):
        raise ValueError("the node permutation is not a symmetry of this graph's structure")
    return target


def permute_nodes(values: Tensor, sigma: Tensor) -> Tensor:
    """Move node rows: ``out[sigma[n]] = values[n]`` for ``values: [N, ...]``."""
    out = torch.empty_like(values)
    out[sigma] = values
    return out


def permute_edges(graph: NeuralGraph, values: Tensor, sigma: Tensor) -> Tensor:
    """Move edge rows under ``sigma``: ``values: [E, ...]`` -> ``[E, ...]``."""
    out = torch.empty_like(values)
    out[edge_permutation(graph, sigma)] = values
    return out


def permute_flat(graph: NeuralGraph, flat: Tensor, sigma: Tensor) -> Tensor:
    """Permute a flat per-parameter-element vector ``[P]`` (parameters, gradients, updates)."""
    x, edge_attr = graph.features(flat)
    return graph.to_flat(permute_nodes(x, sigma), permute_edges(graph, edge_attr, sigma))


@dataclass
class EquivarianceError:
    """Largest absolute deviations; ``None`` where the function gave no such output."""

    node: float | None
    edge: float | None
    invariant: float | None

    def max(self) -> float:
        return max(v for v in (self.node, self.edge, self.invariant) if v is not None)


Outputs = tuple[Tensor | None, Tensor | None, Tensor | None]


def equivariance_error(
    fn: Callable[[Tensor, Tensor], Outputs],
    graph: NeuralGraph,
    sigma: Tensor,
    x: Tensor | None = None,
    edge_attr: Tensor | None = None,
) -> EquivarianceError:
    """How far ``fn`` is from commuting with the hidden-neuron permutation ``sigma``.

    ``fn(x, edge_attr) -> (node_out [N, ...] | None, edge_out [E, ...] | None, invariant | None)``
    is evaluated on the graph's features (or the given ones) and on their permutation; node and
    edge outputs must move like the inputs, the invariant output must not change.
    """
    x = graph.x if x is None else x
    edge_attr = graph.edge_attr if edge_attr is None else edge_attr
    ref = fn(x, edge_attr)
    out = fn(permute_nodes(x, sigma), permute_edges(graph, edge_attr, sigma))
    expected = (
        None if ref[0] is None else permute_nodes(ref[0], sigma),
        None if ref[1] is None else permute_edges(graph, ref[1], sigma),
        ref[2],
    )
    errors = [None if e is None else float((o - e).abs().max()) for o, e in zip(out, expected)]
    return EquivarianceError(*errors)
