"""NG-GNN and NG-T: encoders that read a PyG batch of neural graphs and return node and edge embeddings.

Both share the input encoding (:mod:`encoders.embeddings`), optional probe features
(:mod:`encoders.probes`) and the calling convention::

    x, e = encoder(batch)          # batch: Batch.from_data_list([g.to_pyg() for g in graphs])
    # x [N, hidden] node embeddings, e [E, hidden] edge embeddings, in the batch's order

Graphs of different architectures share a batch when they share one feature layout (see
``NeuralGraph.from_module``). Normalization is per node or per graph, so a graph's embeddings do
not depend on the other graphs of its batch. Readout heads are in :mod:`encoders.readouts`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.utils import degree

from encoders.dense import DenseGraphs, DenseLayout
from encoders.embeddings import InputEncoding, node_batch
from encoders.layers.film_pna import AGGREGATORS, SCALERS, mean_log_degree
from encoders.layers.gnn_layer import FILMS, NGGNNLayer
from encoders.layers.norm import NORMS
from encoders.layers.relational_attention import ATTENTION_MODES
from encoders.layers.transformer_layer import NGTransformerLayer
from encoders.probes import ProbeFeatures, add_probe_features

__all__ = ["EncoderConfig", "NGGNN", "NGGNNConfig", "NGTransformer", "NGTransformerConfig", "degree_histograms"]


def _choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose from {choices}")


@dataclass(kw_only=True)
class EncoderConfig:
    """Options shared by both encoders.

    ``node_features``/``edge_features``: the graphs' feature widths ``Cn`` and ``Ce * K``.
    ``max_inputs``/``max_outputs``/``max_depth``/``max_heads``: sizes of the positional and head
    embedding tables (a graph beyond them raises ``ValueError``). ``probes``: number of learned
    probe inputs (0 disables probe features); ``probe_dim``: input size of the probed networks.
    """

    node_features: int
    edge_features: int
    hidden: int = 32
    layers: int = 4
    dropout: float = 0.0
    norm: str = "layer"
    edge_updates: bool = True
    rff_freqs: int = 128
    rff_scale: float = 3.0
    max_inputs: int = 256
    max_outputs: int = 256
    max_depth: int = 64
    max_heads: int = 16
    probes: int = 0
    probe_dim: int = 2

    def __post_init__(self) -> None:
        for name in ("node_features", "edge_features", "hidden", "layers", "rff_freqs", "max_inputs",
                     "max_outputs", "max_depth", "max_heads", "probe_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.probes < 0:
            raise ValueError(f"probes must be >= 0, got {self.probes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rff_scale <= 0:
            raise ValueError(f"rff_scale must be positive, got {self.rff_scale}")
        _choice(self.norm, NORMS, "norm")


@dataclass(kw_only=True)
class NGGNNConfig(EncoderConfig):
    """NG-GNN: PNA ``aggregators`` x ``scalers``, ``film`` ("linear" or "elementwise").

    The cheap neuron-level configuration (no per-edge matrix products after the input encoding)
    is ``film="elementwise", edge_updates=False``.
    """

    aggregators: tuple[str, ...] = ("mean", "min", "max", "std")
    scalers: tuple[str, ...] = ("identity", "amplification")
    film: str = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.aggregators or not self.scalers:
            raise ValueError("NG-GNN needs at least one aggregator and one scaler")
        for a in self.aggregators:
            _choice(a, AGGREGATORS, "aggregator")
        for s in self.scalers:
            _choice(s, SCALERS, "scaler")
        _choice(self.film, FILMS, "film")


@dataclass(kw_only=True)
class NGTransformerConfig(EncoderConfig):
    """NG-T: ``heads`` (must divide ``hidden``), ``attention`` ("sparse" over edges or "dense" over
    all pairs of each graph), ``ff_ratio`` (width of the feed-forward and edge MLPs / ``hidden``)."""

    rff_scale: float = 1.0
    heads: int = 4
    attention: str = "sparse"
    ff_ratio: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heads < 1 or self.hidden % self.heads:
            raise ValueError(f"hidden size {self.hidden} is not divisible by heads={self.heads}")
        if self.ff_ratio < 1:
            raise ValueError(f"ff_ratio must be a positive integer, got {self.ff_ratio}")
        _choice(self.attention, ATTENTION_MODES, "attention mode")


def degree_histograms(graphs: Iterable) -> tuple[Tensor, Tensor]:
    """In- and out-degree histograms (``[max degree + 1]`` counts) over ``graphs``.

    ``graphs``: ``NeuralGraph``, ``Data`` or ``Batch`` objects, representative of what the encoder
    will see; NG-GNN's degree scalers divide by the mean ``log(deg + 1)`` they imply.
    """
    ins, outs = [], []
    for g in graphs:
        ins.append(degree(g.edge_index[1], g.num_nodes, dtype=torch.long))
        outs.append(degree(g.edge_index[0], g.num_nodes, dtype=torch.long))
    if not ins:
        raise ValueError("degree_histograms needs at least one graph")
    return torch.bincount(torch.cat(ins)), torch.bincount(torch.cat(outs))


class NeuralGraphEncoder(nn.Module):
    """Input encoding, optional probe features, then ``layers`` of ``(x, edge_index, e, batch) -> (x, e)``."""

    def __init__(self, config: EncoderConfig, layers: list[nn.Module]) -> None:
        super().__init__()
        self.config = config
        self.embed = InputEncoding(
            config.node_features, config.edge_features, config.hidden, num_freqs=config.rff_freqs,
            scale=config.rff_scale, max_inputs=config.max_inputs, max_outputs=config.max_outputs,
            max_depth=config.max_depth, max_heads=config.max_heads,
        )
        self.probes = ProbeFeatures(config.probes, config.probe_dim, config.hidden) if config.probes else None
        self.layers = nn.ModuleList(layers)
        self._compiled: Callable | None = None

    def dense_layers(self, x: Tensor, e: Tensor, layout: DenseLayout) -> tuple[Tensor, Tensor]:
        """Every layer's dense path: ``x [B, N, d]``, ``e [B, E, d]`` -> the same shapes."""
        for layer in self.layers:
            x, e = layer.forward_dense(x, e, layout)
        return x, e

    def compile_dense(self, **options: Any) -> None:
        """Run the dense path's layer stack through ``torch.compile(**options)`` from now on.

        Inductor fuses each layer's broadcasts and reductions into a few loops; the compile
        (under a minute on two cores) happens at the first dense call and again for a new
        architecture or batch size. The input encoding and the sparse path stay eager.
        """
        self._compiled = torch.compile(self.dense_layers, **options)

    def forward(
        self, data: Data | DenseGraphs, probe_net: nn.Sequential | None = None,
        probe_params: Mapping[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Node and edge embeddings ``(x [N, hidden], e [E, hidden])`` of a PyG ``Batch`` (or ``Data``).

        Given :class:`~encoders.dense.DenseGraphs` (``B`` graphs of one architecture), runs every
        layer's dense path and returns ``(x [B, N, hidden], e [B, E, hidden])``: the same values,
        faster. With probe features enabled, ``probe_net`` (the MLP architecture of all graphs in
        the batch) and ``probe_params`` (``{name: [B, *shape]}``, graph ``b`` holding network ``b``)
        are required.
        """
        x, e = self.embed(data)
        x = add_probe_features(x, data, self.probes, probe_net, probe_params)
        if isinstance(data, DenseGraphs):
            return (self._compiled or self.dense_layers)(x, e, data.layout)
        batch = node_batch(data)
        for layer in self.layers:
            x, e = layer(x, data.edge_index, e, batch)
        return x, e


class NGGNN(NeuralGraphEncoder):
    """NG-GNN (Kofinas et al. 2024): PNA message passing with FiLM edge modulation and edge updates.

    ``degrees = degree_histograms(graphs)`` sets the degree scalers' normalisation (saved with the
    model). See :class:`~encoders.layers.NGGNNLayer` for one layer. Cost per layer:
    ``O(N * d^2 + E * d)`` gathers/scatters plus ``E * d * 4d`` (linear FiLM) and
    ``2 * E * d^2`` (edge update) matrix products; both vanish with ``film="elementwise"`` and
    ``edge_updates=False``. Memory ``O((N + E) * d)`` per layer.
    """

    def __init__(self, config: NGGNNConfig, degrees: tuple[Tensor, Tensor]) -> None:
        avg_log_degree = (mean_log_degree(degrees[0]), mean_log_degree(degrees[1]))
        layers = [
            NGGNNLayer(config.hidden, aggregators=config.aggregators, scalers=config.scalers,
                       avg_log_degree=avg_log_degree, film=config.film, edge_update=config.edge_updates,
                       norm=config.norm, dropout=config.dropout)
            for _ in range(config.layers)
        ]
        super().__init__(config, layers)


class NGTransformer(NeuralGraphEncoder):
    """NG-T: relational transformer layers (see :class:`~encoders.layers.NGTransformerLayer`).

    Memory per layer: ``O((E + N) * d)`` with ``attention="sparse"`` (each node attends to its in-
    and out-neighbours and itself); ``O(B * M^2 * d)`` with ``attention="dense"`` (all pairs of each
    of the ``B`` graphs, ``M`` = nodes of the largest graph), with a padding mask.
    """

    def __init__(self, config: NGTransformerConfig) -> None:
        layers = [
            NGTransformerLayer(config.hidden, config.heads, mode=config.attention, ff_ratio=config.ff_ratio,
                               edge_update=config.edge_updates, norm=config.norm, dropout=config.dropout)
            for _ in range(config.layers)
        ]
        super().__init__(config, layers)
