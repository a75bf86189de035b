"""Heads on top of the encoders' node and edge embeddings.

* :class:`GraphReadout` — invariant, one vector per graph (classification, regression).
* :class:`NodeEdgeHead` — equivariant, back to the graphs' feature space, so that
  ``graph.to_state_dict(x=..., edge_attr=...)`` writes the result into parameter shapes
  (:func:`unbatch_features` splits a batch per graph).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.utils import scatter, unbatch

from encoders.builder import Role
from encoders.dense import DenseLayout
from encoders.embeddings import node_batch
from encoders.layers.edge_mlp import EdgeMLP

__all__ = ["GraphReadout", "NodeEdgeHead", "unbatch_features"]


class GraphReadout(nn.Module):
    """Invariant readout: ``MLP([out_0 || ... || out_{max_outputs-1} || mean_hidden || max_hidden])``.

    ``out_k`` is the embedding of output neuron ``k`` (zeros where a graph has fewer outputs), so
    the output order of the network is kept; mean and max pool over all other non-input nodes.
    Shapes: ``x [N, hidden]``, PyG ``data`` of ``B`` graphs -> ``[B, out_features]``.
    """

    def __init__(self, hidden: int, out_features: int, max_outputs: int, mlp_hidden: int | None = None) -> None:
        super().__init__()
        self.max_outputs = max_outputs
        width = mlp_hidden or 2 * hidden
        self.mlp = nn.Sequential(
            nn.Linear((max_outputs + 2) * hidden, width), nn.SiLU(), nn.Linear(width, out_features)
        )

    def forward(self, x: Tensor, data: Data) -> Tensor:
        batch = node_batch(data)
        num_graphs = int(batch.max()) + 1
        role, index = data.node_role, data.node_index
        is_out = role == Role.OUTPUT
        if is_out.any() and int(index[is_out].max()) >= self.max_outputs:
            raise ValueError(
                f"a graph has {int(index[is_out].max()) + 1} output neurons; the readout holds max_outputs="
                f"{self.max_outputs}"
            )
        slot = batch[is_out] * self.max_outputs + index[is_out]
        outputs = scatter(x[is_out], slot, dim=0, dim_size=num_graphs * self.max_outputs, reduce="sum")
        outputs = rearrange(outputs, "(b k) d -> b (k d)", k=self.max_outputs)
        hidden = (role != Role.INPUT) & ~is_out
        pooled = [scatter(x[hidden], batch[hidden], dim=0, dim_size=num_graphs, reduce=r) for r in ("mean", "max")]
        return self.mlp(torch.cat([outputs, *pooled], dim=-1))

    def forward_dense(self, x: Tensor, layout: DenseLayout) -> Tensor:
        """The same readout of a same-architecture batch: ``x [B, N, hidden]`` -> ``[B, out_features]``."""
        role, index = layout.node_role, layout.node_index
        is_out = role == Role.OUTPUT
        outputs = x.new_zeros(x.shape[0], self.max_outputs, x.shape[-1])
        if is_out.any():
            if int(index[is_out].max()) >= self.max_outputs:
                raise ValueError(f"a graph has {int(index[is_out].max()) + 1} output neurons; the readout holds "
                                 f"max_outputs={self.max_outputs}")
            outputs = outputs.index_copy(1, index[is_out], x[:, is_out])
        hidden = x[:, (role != Role.INPUT) & ~is_out]
        pooled = [hidden.mean(1), hidden.amax(1)] if hidden.shape[1] else [x.new_zeros(x.shape[0], x.shape[-1])] * 2
        return self.mlp(torch.cat([outputs.flatten(1), *pooled], dim=-1))


class NodeEdgeHead(nn.Module):
    """Equivariant head: node and edge embeddings -> node and edge features.

    ``node_out = scale * MLP(x)`` ``[N, node_features]`` and
    ``edge_out = scale * EdgeMLP(e_ji, x_j, x_i)`` ``[E, edge_features]`` (each edge reads its end
    nodes, so it works with and without encoder edge updates). ``scale`` is learnable; start it
    small (e.g. 0.01) to predict edits ``graph.x + node_out`` near the identity.
    """

    def __init__(self, hidden: int, node_features: int, edge_features: int, scale: float = 1.0) -> None:
        super().__init__()
        self.node = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, node_features))
        self.edge = EdgeMLP(hidden, hidden, edge_features)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        return self.scale * self.node(x), self.scale * self.edge(x, edge_index, e)

    def forward_dense(self, x: Tensor, e: Tensor, layout: DenseLayout) -> tuple[Tensor, Tensor]:
        """The same head on a same-architecture batch: ``x [B, N, hidden]``, ``e [B, E, hidden]``."""
        return self.scale * self.node(x), self.scale * self.edge.forward_dense(x, e, layout)


def unbatch_features(data: Data, x: Tensor, edge_attr: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Split batched ``x [N, ...]`` and ``edge_attr [E, ...]`` into one ``(x_g, edge_attr_g)`` per graph.

    Feed each pair to that graph's ``NeuralGraph.to_state_dict(x=x_g, edge_attr=edge_attr_g)``.
    """
    batch = node_batch(data)
    num_graphs = int(batch.max()) + 1
    nodes = unbatch(x, batch, batch_size=num_graphs)
    edges = unbatch(edge_attr, batch[data.edge_index[0]], batch_size=num_graphs)
    return list(zip(nodes, edges))
