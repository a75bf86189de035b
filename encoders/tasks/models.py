"""Models of the weight-space harness: NG-GNN, NG-T, a DeepSets set model and an MLP on flat weights.

Every model maps a :class:`~encoders.tasks.data.WeightBatch` of ``B`` networks to ``[B, out]``
(invariant tasks) or to a parameter delta ``[B, P]`` (editing tasks, ``P`` = the task's width):

* ``ng-gnn`` / ``ng-t`` — :class:`GraphModel`: the neural-graph encoder with a
  :class:`~encoders.GraphReadout` or a :class:`~encoders.NodeEdgeHead` whose per-node/per-edge
  deltas (scale initialised at 0.01) are written back into parameter order.
* ``deepsets`` — the same heads on :class:`DeepSetsEncoder`: each neuron and each weight is
  embedded on its own (value, position, activation, kind), and a pooled summary of the whole network
  is added back; no message passing. Equivariant to every permutation that keeps the positional
  embeddings, hidden-neuron permutations included.
* ``mlp`` — :class:`FlatMLP` on the flattened (standardized, zero-padded) weights; no symmetry.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from encoders.builder import Role
from encoders.dense import DenseLayout
from encoders.embeddings import InputEncoding, node_batch
from encoders.graph import NeuralGraph
from encoders.models import (
    NGGNN,
    NeuralGraphEncoder,
    NGGNNConfig,
    NGTransformer,
    NGTransformerConfig,
    degree_histograms,
)
from encoders.probes import ProbeFeatures, add_probe_features, layer_activations, require_probe_inputs
from encoders.readouts import GraphReadout, NodeEdgeHead, unbatch_features
from encoders.tasks.data import WeightBatch
from encoders.tasks.tasks import WeightTask

__all__ = ["ENCODERS", "DeepSetsEncoder", "FlatMLP", "GraphModel", "build_model"]

ENCODERS = ("ng-gnn", "ng-t", "deepsets", "mlp")
EDIT_SCALE = 0.01


class DeepSetsEncoder(nn.Module):
    """DeepSets over the neurons and weights of each network: ``(x [N, d], e [E, d])`` like the NG encoders.

    ``x' = phi_n(x0) + rho(pool)[graph]``, ``e' = phi_e(e0) + rho(pool)[graph]`` with ``x0, e0`` the
    shared input encoding (plus probe features when ``probes`` > 0, as in the NG encoders) and
    ``pool`` the per-graph mean and max of ``phi_n(x0)`` and ``phi_e(e0)``.
    """

    def __init__(self, node_features: int, edge_features: int, hidden: int, probes: int = 0,
                 probe_dim: int = 2) -> None:
        super().__init__()
        self.embed = InputEncoding(node_features, edge_features, hidden)
        self.probes = ProbeFeatures(probes, probe_dim, hidden) if probes else None
        self.phi_n = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.phi_e = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.rho = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, data: Data, probe_net: nn.Sequential | None = None,
                probe_params: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        x0, e0 = self.embed(data)
        x0 = add_probe_features(x0, data, self.probes, probe_net, probe_params)
        x, e = self.phi_n(x0), self.phi_e(e0)
        batch = node_batch(data)
        edge_batch = batch[data.edge_index[0]]
        size = int(batch.max()) + 1
        pooled = [scatter(v, b, dim=0, dim_size=size, reduce=r) for v, b in ((x, batch), (e, edge_batch))
                  for r in ("mean", "max")]
        context = self.rho(torch.cat(pooled, dim=-1))
        return x + context[batch], e + context[edge_batch]


class GraphModel(nn.Module):
    """A neural-graph encoder with an invariant readout (``out_features``) or an edit head (``width``).

    NG-GNN and NG-T read a batch whose networks share one architecture through the encoders'
    dense path (:mod:`encoders.dense`; the same values, several times faster) unless ``dense`` is
    false; other batches, and DeepSets, go through the sparse PyG path.
    """

    def __init__(self, encoder: nn.Module, hidden: int, out_features: int, max_outputs: int,
                 edit_features: tuple[int, int] | None = None, width: int = 0, dense: bool = True) -> None:
        super().__init__()
        self.encoder, self.width, self.dense = encoder, width, dense
        if edit_features is None:
            self.readout: nn.Module = GraphReadout(hidden, out_features, max_outputs)
        else:
            self.readout = NodeEdgeHead(hidden, *edit_features, scale=EDIT_SCALE)

    def forward(self, batch: WeightBatch, probe_net: nn.Sequential | None = None,
                probe_params: Mapping[str, Tensor] | None = None) -> Tensor:
        dense = batch.dense if self.dense and isinstance(self.encoder, NeuralGraphEncoder) else None
        data = batch.graphs if dense is None else dense
        if getattr(self.encoder, "probes", None) is not None:
            x, e = self.encoder(data, probe_net=probe_net, probe_params=probe_params)
        else:
            x, e = self.encoder(data)
        if dense is not None:
            return self._dense_output(x, e, dense.layout, batch.structures[0])
        if isinstance(self.readout, GraphReadout):
            return self.readout(x, data)
        dx, de = self.readout(x, e, data.edge_index)
        delta = x.new_zeros(len(batch), self.width)
        for i, (graph, (gx, ge)) in enumerate(zip(batch.structures, unbatch_features(data, dx, de))):
            delta[i, :graph.num_params] = graph.to_flat(gx, ge)
        return delta

    def _dense_output(self, x: Tensor, e: Tensor, layout: DenseLayout, graph: NeuralGraph) -> Tensor:
        if isinstance(self.readout, GraphReadout):
            return self.readout.forward_dense(x, layout)
        dx, de = self.readout.forward_dense(x, e, layout)
        delta = torch.func.vmap(graph.to_flat)(dx, de)
        return nn.functional.pad(delta, (0, self.width - graph.num_params))


class FlatMLP(nn.Module):
    """MLP on the flat standardized weights ``[B, P]`` -> ``[B, out]``; for edits ``scale * MLP`` with a
    learnable ``scale`` (initialised at 0.01), masked to each network's own parameters.

    ``probe_width`` > 0 (INR tasks): ``probes`` learned input points, and the MLP also reads every
    layer's activations of each network at them (``probes * probe_width`` values, ``probe_width`` =
    the network's neurons past its inputs). With them it is the function-space baseline of the
    probe-feature encoders: the same information, no graph.
    """

    def __init__(self, width: int, out_features: int, hidden: int, layers: int, edits: bool, probes: int = 0,
                 probe_dim: int = 2, probe_width: int = 0) -> None:
        super().__init__()
        self.probes = nn.Parameter(torch.rand(probes, probe_dim) * 2 - 1) if probes else None
        dims = [width + probes * probe_width] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        self.mlp = nn.Sequential(*blocks, nn.Linear(dims[-1], out_features))
        self.scale = nn.Parameter(torch.tensor(EDIT_SCALE)) if edits else None

    def forward(self, batch: WeightBatch, probe_net: nn.Sequential | None = None,
                probe_params: Mapping[str, Tensor] | None = None) -> Tensor:
        inputs = batch.flat
        if self.probes is not None:
            require_probe_inputs(probe_net, probe_params)
            acts = layer_activations(probe_net, probe_params, self.probes)[1:]  # each [B, K, n_l]
            inputs = torch.cat([inputs, *(a.flatten(1) for a in acts)], dim=1)
        out = self.mlp(inputs)
        if self.scale is None:
            return out
        mask = torch.zeros_like(out)
        for i, graph in enumerate(batch.structures):
            mask[i, :graph.num_params] = 1.0
        return self.scale * out * mask


def _max_outputs(graphs: list[NeuralGraph]) -> int:
    return max(int((g.node_role == Role.OUTPUT).sum()) for g in graphs)


def build_model(encoder: str, task: WeightTask, *, hidden: int = 32, layers: int = 4, probes: int = 0,
                dropout: float = 0.0, dense: bool = True) -> nn.Module:
    """The model ``encoder`` (one of :data:`ENCODERS`) sized for ``task``'s zoo.

    ``probes`` > 0 adds probe features (INR tasks only): node features of ``ng-gnn``, ``ng-t`` and
    ``deepsets``, extra inputs of ``mlp``. ``dense``: see :class:`GraphModel`.
    """
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose from {ENCODERS} (or 'stats')")
    if probes and task.kind != "inr":
        raise ValueError(f"probe features need an INR task (same-architecture MLPs), not {task.name!r}")
    probe_dim = task.probe_net[0].in_features if probes else 2
    if encoder == "mlp":
        probe_width = sum(m.out_features for m in task.probe_net if isinstance(m, nn.Linear)) if probes else 0
        return FlatMLP(task.train.raw.shape[1], task.out_features, 4 * hidden, 2, task.edits, probes, probe_dim,
                       probe_width)
    graphs = list({id(g): g for g in task.train.structures}.values())
    node_features, edge_features = graphs[0].x.shape[1], graphs[0].edge_attr.shape[1]
    options = {"node_features": node_features, "edge_features": edge_features, "hidden": hidden, "layers": layers,
               "dropout": dropout, "probes": probes, "probe_dim": probe_dim}
    if encoder == "ng-gnn":
        enc: nn.Module = NGGNN(NGGNNConfig(**options), degree_histograms(graphs))
    elif encoder == "ng-t":
        enc = NGTransformer(NGTransformerConfig(**options))
    else:
        enc = DeepSetsEncoder(node_features, edge_features, hidden, probes, probe_dim)
    edit = (node_features, edge_features) if task.edits else None
    return GraphModel(enc, hidden, task.out_features, _max_outputs(graphs), edit, task.train.raw.shape[1], dense)
