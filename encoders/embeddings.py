"""Input encoding shared by NG-GNN and NG-T: neural-graph features and metadata -> hidden vectors.

* Values (biases, weights, kernel slices) go through random Fourier features and a linear layer.
* Nodes get embeddings for everything the network itself tells apart: the position of each input
  and each output neuron (its own vector), the layer of a hidden neuron (one vector per depth,
  shared by the layer, so hidden-neuron permutations stay symmetries), the activation, the role
  and, for attention neurons, the head.
* Edges get an embedding of their kind (weight, residual, norm, attention).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from encoders.builder import ACTIVATIONS, EdgeKind, Role
from encoders.dense import DenseGraphs

__all__ = ["FourierFeatures", "InputEncoding", "NodeEmbedding", "node_batch"]


class FourierFeatures(nn.Module):
    r"""Random Fourier features of raw values, then a linear layer.

    :math:`\gamma(v) = [\cos 2\pi v B, \sin 2\pi v B]` with a fixed :math:`B \sim N(0, s^2)` of shape
    ``[in_features, num_freqs]`` (a buffer, saved with the model), followed by
    ``Linear(2 * num_freqs, out_features)``. Shapes: ``values [*, in_features] -> [*, out_features]``.
    """

    def __init__(self, in_features: int, out_features: int, num_freqs: int = 128, scale: float = 3.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(in_features, num_freqs) * scale)
        self.linear = nn.Linear(2 * num_freqs, out_features)

    def forward(self, values: Tensor) -> Tensor:
        if values.shape[-1] != self.freqs.shape[0]:
            raise ValueError(
                f"expected {self.freqs.shape[0]} features per row, got {values.shape[-1]}: build the graphs with "
                "the feature layout the encoder was configured for (node_features / edge_features)"
            )
        angles = (2 * math.pi) * values @ self.freqs
        return self.linear(torch.cat([angles.cos(), angles.sin()], dim=-1))


def node_batch(data: Data) -> Tensor:
    """``[N]`` graph id of every node of a PyG ``Batch`` (all zeros for a single ``Data``)."""
    batch = getattr(data, "batch", None)
    return batch if batch is not None else data.node_role.new_zeros(data.num_nodes)


def _check_range(values: Tensor, limit: int, what: str, field: str) -> None:
    if values.numel() and int(values.max()) >= limit:
        raise ValueError(
            f"a graph has {what} index {int(values.max())}, beyond the embedding table of size {limit}; "
            f"raise the encoder config's {field}"
        )


class NodeEmbedding(nn.Module):
    """Positional, activation, role and attention-head embeddings of nodes: ``data -> [N, hidden]``.

    The positional table has three sections: input neurons by ``node_index`` (``max_inputs``),
    output neurons by ``node_index`` (``max_outputs``; so networks with different output sizes share
    it), every other node by ``node_depth`` (``max_depth``). Head embeddings are added to attention
    neurons only. An index beyond its section raises ``ValueError`` naming the config field.
    """

    def __init__(self, hidden: int, max_inputs: int, max_outputs: int, max_depth: int, max_heads: int) -> None:
        super().__init__()
        self.max_inputs, self.max_outputs = max_inputs, max_outputs
        self.max_depth, self.max_heads = max_depth, max_heads
        self.position = nn.Embedding(max_inputs + max_outputs + max_depth, hidden)
        self.activation = nn.Embedding(len(ACTIVATIONS), hidden)
        self.role = nn.Embedding(len(Role), hidden)
        self.head = nn.Embedding(max_heads, hidden)

    def forward(self, node_role: Tensor, node_index: Tensor, node_depth: Tensor, node_activation: Tensor,
                node_head: Tensor) -> Tensor:
        """All arguments ``[N]`` (long), as on ``NeuralGraph.to_pyg()``; returns ``[N, hidden]``."""
        is_input, is_output = node_role == Role.INPUT, node_role == Role.OUTPUT
        is_attention = node_role == Role.ATTENTION
        _check_range(node_index[is_input], self.max_inputs, "input-neuron", "max_inputs")
        _check_range(node_index[is_output], self.max_outputs, "output-neuron", "max_outputs")
        _check_range(node_depth[~(is_input | is_output)], self.max_depth, "layer-depth", "max_depth")
        _check_range(node_head[is_attention], self.max_heads, "attention-head", "max_heads")
        position = torch.where(
            is_input,
            node_index,
            torch.where(is_output, self.max_inputs + node_index, self.max_inputs + self.max_outputs + node_depth),
        )
        head = self.head(node_head) * is_attention.unsqueeze(-1)
        return self.position(position) + self.activation(node_activation) + self.role(node_role) + head


class InputEncoding(nn.Module):
    """Hidden vectors of a (batched) neural graph: ``data -> (x [N, hidden], e [E, hidden])``.

    ``x = RFF(data.x) + NodeEmbedding(metadata)``; ``e = RFF(data.edge_attr) + EdgeKindEmbedding``.
    ``node_features`` (``Cn``) and ``edge_features`` (``Ce * K``) are the graphs' feature widths.
    """

    def __init__(
        self,
        node_features: int,
        edge_features: int,
        hidden: int,
        *,
        num_freqs: int = 128,
        scale: float = 3.0,
        max_inputs: int = 256,
        max_outputs: int = 256,
        max_depth: int = 64,
        max_heads: int = 16,
    ) -> None:
        super().__init__()
        self.node_values = FourierFeatures(node_features, hidden, num_freqs, scale)
        self.edge_values = FourierFeatures(edge_features, hidden, num_freqs, scale)
        self.nodes = NodeEmbedding(hidden, max_inputs, max_outputs, max_depth, max_heads)
        self.edge_kind = nn.Embedding(len(EdgeKind), hidden)

    def forward(self, data: Data | DenseGraphs) -> tuple[Tensor, Tensor]:
        """PyG ``data`` -> ``(x [N, hidden], e [E, hidden])``; :class:`~encoders.dense.DenseGraphs`
        -> ``(x [B, N, hidden], e [B, E, hidden])`` (metadata shared by the batch, embedded once)."""
        meta = data.layout if isinstance(data, DenseGraphs) else data
        x = self.node_values(data.x) + self.nodes(
            meta.node_role, meta.node_index, meta.node_depth, meta.node_activation, meta.node_head
        )
        e = self.edge_values(data.edge_attr) + self.edge_kind(meta.edge_kind)
        return x, e
