"""The neural graph of a network: neurons are nodes, weights are edges (Kofinas et al., ICLR 2024).

A :class:`NeuralGraph` holds the *structure* of one architecture — nodes with metadata, edges, and an
index map from every parameter element to the node or edge feature where it lives — together with
node/edge features filled from one set of parameter values. The structure is computed once; moving
values between parameters and features is then one gather or scatter on flat tensors
(:meth:`NeuralGraph.features` and :meth:`NeuralGraph.to_state_dict`), differentiable both ways.

Feature layout:

* ``x: [N, Cn]`` — node features. Channel 0 holds biases (and the shift ``beta`` of normalization
  layers); a second per-neuron parameter (e.g. a class token) takes channel 1. Input neurons are 0.
* ``edge_attr: [E, Ce * K]`` — edge features, ``Ce`` channels (1 for every layer template) of
  ``K`` slots each. A convolution kernel fills the slots of its channel, zero-padded *centred* in
  the largest kernel grid of the graph (``kernel_grid``); a linear weight sits at the centre slot;
  a linear layer after a flatten keeps the flattened spatial positions ``0..S-1`` of each input
  channel in slots ``0..S-1`` (likewise a value head that several query heads share);
  residual, gate and attention edges carry a constant identity kernel (1 at the centre).

Layering: this module holds the data structure only and imports neither the tracer
(:mod:`encoders.tracing`) nor shape chaining (:mod:`encoders.chaining`). Those describe a network
to a :class:`~encoders.builder.GraphBuilder`; :mod:`encoders.build` joins them to
:meth:`NeuralGraph.from_builder` and registers its constructors here when imported, so
:meth:`NeuralGraph.from_module` and :meth:`NeuralGraph.from_parameters` keep their place on the
class (and in the API docs) while delegating to it. ``encoders/__init__.py`` imports
:mod:`encoders.build`, and Python runs it before any ``encoders.*`` module, so the constructors are
in place for every user of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from encoders.builder import ACTIVATIONS, EdgeKind, GraphBuilder, Neighbourhood, ParamsLike, Role

__all__ = ["NeuralGraph", "ParamsLike"]

# "module" / "parameters" -> make(cls, source, layout); filled by encoders.build when it is imported
_CONSTRUCTORS: dict[str, Callable[[type[NeuralGraph], Any, dict[str, Any]], NeuralGraph]] = {}


def register_constructor(kind: str, make: Callable[[type[NeuralGraph], Any, dict[str, Any]], NeuralGraph]) -> None:
    """Install the function behind ``NeuralGraph.from_<kind>`` (``kind``: ``"module"`` or
    ``"parameters"``); :mod:`encoders.build` does this on import."""
    if kind not in ("module", "parameters"):
        raise ValueError(f"unknown constructor kind {kind!r}; expected 'module' or 'parameters'")
    _CONSTRUCTORS[kind] = make


def _construct(kind: str, cls: type[NeuralGraph], source: Any, layout: dict[str, Any]) -> NeuralGraph:
    make = _CONSTRUCTORS.get(kind)
    if make is None:  # only reachable if encoders/__init__.py was bypassed
        raise RuntimeError(f"NeuralGraph.from_{kind} is provided by encoders.build, which has not been imported")
    return make(cls, source, layout)


class NeuralGraphData(Data):
    """The PyG ``Data`` of a neural graph: ``node_index`` (a position within a layer, not a node id)
    is not offset when graphs are batched, as PyG does for attributes named ``*index*``."""

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        return 0 if key == "node_index" else super().__inc__(key, value, *args, **kwargs)


@dataclass(eq=False)
class NeuralGraph:
    """Neural graph of one network. Build with :meth:`from_module` or :meth:`from_parameters`.

    Structure (fixed per architecture), ``N`` nodes and ``E`` edges:

    * ``edge_index: [2, E]`` (source, target); ``edge_kind: [E]`` (:class:`~encoders.builder.EdgeKind`).
    * Bicliques: every dense layer connection (all sources to all targets), as memberships
      ``biclique_src: [2, S]`` and ``biclique_dst: [2, D]`` (rows: node id, biclique id);
      ``edge_in_biclique: [E]`` marks the edges they cover (the rest are one-to-one edges). Layers
      that aggregate neuron states over neighbours use them to cost ``O(N)`` instead of ``O(E)``.
    * ``node_role [N]`` (:class:`~encoders.builder.Role`), ``node_depth [N]`` (layer depth, inputs 0),
      ``node_block [N]`` (which layer block), ``node_index [N]`` (position within its block, used for
      input/output positional embeddings), ``node_activation [N]`` (index into ``ACTIVATIONS``),
      ``node_head [N]`` (attention head, else 0), ``node_group [N]`` (permutation group of hidden
      neurons; -1 for neurons that no symmetry moves), ``node_unit [N]`` (the unit a symmetry
      reorders: a layer, or one head of an attention projection; the units of one group are
      reordered alike, position by position).
    * Index map: parameter elements at flat positions ``edge_elem_pos`` live at flat positions
      ``edge_elem_slot`` of ``edge_attr``; likewise ``node_elem_pos``/``node_elem_slot`` for ``x``.

    Values: ``x [N, Cn]`` and ``edge_attr [E, Ce*K]`` from the parameters given at construction.
    """

    num_nodes: int
    edge_index: Tensor
    edge_kind: Tensor
    edge_base: Tensor
    biclique_src: Tensor
    biclique_dst: Tensor
    edge_in_biclique: Tensor
    node_role: Tensor
    node_depth: Tensor
    node_block: Tensor
    node_index: Tensor
    node_activation: Tensor
    node_head: Tensor
    node_group: Tensor
    node_unit: Tensor
    node_channels: int
    edge_channels: int
    kernel_grid: tuple[int, ...]
    slots: int
    param_names: list[str]
    param_shapes: list[tuple[int, ...]]
    edge_elem_pos: Tensor
    edge_elem_slot: Tensor
    node_elem_pos: Tensor
    node_elem_slot: Tensor
    x: Tensor = field(init=False)
    edge_attr: Tensor = field(init=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_module(cls, model: nn.Module, example_inputs: tuple | dict | None = None, **layout: Any) -> NeuralGraph:
        """Exact graph of ``model``, traced.

        ``torch.fx`` traces it where it can (see :mod:`encoders.tracing`), needing no inputs; where
        it cannot, ``torch.export`` runs it on ``example_inputs`` (a tuple of positional arguments
        or a dict of keyword arguments; see :mod:`encoders.exporting`). Hugging Face models are
        exported, with inputs built from their config when none are given.

        ``layout`` sets minimum feature layouts shared across graphs: ``kernel_grid`` (e.g.
        ``(7, 7)``), ``node_channels``, ``edge_channels``, ``slots``. Raises ``ValueError`` naming
        the module and operation for a layer it cannot represent. Delegates to
        :func:`encoders.build.graph_from_module`.
        """
        return _construct("module", cls, (model, example_inputs), layout)

    @classmethod
    def from_parameters(cls, params: ParamsLike, **layout: Any) -> NeuralGraph:
        """Graph from parameter shapes and order alone (what an optimizer sees).

        See :mod:`encoders.chaining` for the rules and what shapes cannot tell; ``layout`` as in
        :meth:`from_module`. Delegates to :func:`encoders.build.graph_from_parameters`.
        """
        return _construct("parameters", cls, params, layout)

    @classmethod
    def from_builder(cls, builder: GraphBuilder, named: list[tuple[str, Tensor]], **layout: Any) -> NeuralGraph:
        """The graph a filled :class:`~encoders.builder.GraphBuilder` describes, with features from
        ``named`` (the parameters it placed, in order); ``layout`` as in :meth:`from_module`."""
        graph = cls(**builder.finish(named, **layout))  # the structure lives on the CPU, its features too
        graph.x, graph.edge_attr = graph.features([t.detach().cpu() for _, t in named])
        return graph

    # ------------------------------------------------------------------ sizes
    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    @property
    def num_params(self) -> int:
        """Number of parameter elements the graph covers."""
        return sum(prod(s) for s in self.param_shapes)

    @property
    def element_edge(self) -> Tensor:
        """``[P]`` edge id of every parameter element in flat order (-1 where it is on a node)."""
        out = torch.full((self.num_params,), -1, dtype=torch.long)
        out[self.edge_elem_pos] = self.edge_elem_slot // (self.edge_channels * self.slots)
        return out

    @property
    def element_node(self) -> Tensor:
        """``[P]`` node id of every parameter element in flat order (-1 where it is on an edge)."""
        out = torch.full((self.num_params,), -1, dtype=torch.long)
        out[self.node_elem_pos] = self.node_elem_slot // self.node_channels
        return out

    def neighbourhood(self) -> Neighbourhood:
        """Connectivity for neuron-level aggregation: bicliques, one-to-one edges and degrees."""
        degrees = torch.stack([torch.bincount(self.edge_index[1], minlength=self.num_nodes),
                               torch.bincount(self.edge_index[0], minlength=self.num_nodes)], 1).float()
        return Neighbourhood(self.num_nodes, self.biclique_src, self.biclique_dst,
                             self.edge_index[:, ~self.edge_in_biclique], degrees)

    # ------------------------------------------------------------------ values <-> features
    def _check_params(self, params: list[Tensor]) -> None:
        shapes = [tuple(p.shape) for p in params]
        if shapes != self.param_shapes:
            raise ValueError(
                f"parameters do not match this graph: expected shapes {self.param_shapes}, got {shapes}"
            )

    def flatten(self, params: list[Tensor]) -> Tensor:
        """Concatenate ``params`` (graph order) into one flat vector ``[P]``."""
        self._check_params(params)
        return torch.cat([p.reshape(-1) for p in params])

    def features(self, params: list[Tensor] | Tensor) -> tuple[Tensor, Tensor]:
        """Node and edge features for new parameter values (list in graph order, or flat ``[P]``).

        Returns ``x [N, Cn]`` and ``edge_attr [E, Ce*K]`` on the device of ``params``; differentiable
        w.r.t. ``params``. Extra leading dims are not supported; use ``torch.func.vmap`` for batches.
        """
        flat = params if isinstance(params, Tensor) else self.flatten(params)
        if flat.shape != (self.num_params,):
            raise ValueError(f"expected a flat parameter vector of {self.num_params} values, got {tuple(flat.shape)}")
        node_slot, node_pos, edge_slot, edge_pos = self._element_maps(flat.device)
        x = flat.new_zeros(self.num_nodes * self.node_channels)
        x = x.index_copy(0, node_slot, flat[node_pos])
        edge = self.edge_base.to(flat).reshape(-1)
        edge = edge.index_copy(0, edge_slot, flat[edge_pos])
        return x.view(self.num_nodes, self.node_channels), edge.view(self.edge_base.shape)

    def to_flat(self, x: Tensor | None = None, edge_attr: Tensor | None = None) -> Tensor:
        """Inverse of :meth:`features`: the flat parameter vector ``[P]`` held by ``x``/``edge_attr``.

        ``x: [N, Cn]`` and ``edge_attr: [E, Ce*K]`` default to the graph's own features.
        """
        x = self.x if x is None else x
        edge_attr = self.edge_attr if edge_attr is None else edge_attr
        if tuple(x.shape) != (self.num_nodes, self.node_channels):
            raise ValueError(f"x must have shape {(self.num_nodes, self.node_channels)}, got {tuple(x.shape)}")
        if tuple(edge_attr.shape) != tuple(self.edge_base.shape):
            raise ValueError(
                f"edge_attr must have shape {tuple(self.edge_base.shape)}, got {tuple(edge_attr.shape)}"
            )
        node_slot, node_pos, edge_slot, edge_pos = self._element_maps(x.device)
        flat = x.new_zeros(self.num_params)
        flat = flat.index_copy(0, node_pos, x.reshape(-1)[node_slot])
        return flat.index_copy(0, edge_pos, edge_attr.reshape(-1)[edge_slot])

    def _element_maps(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Where parameter elements sit among the features (node slot, node position, edge slot, edge
        position), on ``device``: the graph's structure lives on the CPU, values may live anywhere."""
        maps = (self.node_elem_slot, self.node_elem_pos, self.edge_elem_slot, self.edge_elem_pos)
        return tuple(m.to(device) for m in maps)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a flat vector ``[P]`` into ``{name: tensor}`` with the parameters' shapes."""
        sizes = [prod(s) for s in self.param_shapes]
        return {
            name: chunk.view(shape)
            for name, chunk, shape in zip(self.param_names, flat.split(sizes), self.param_shapes)
        }

    def to_state_dict(self, x: Tensor | None = None, edge_attr: Tensor | None = None) -> dict[str, Tensor]:
        """``{param name: tensor}`` from the graph's features, or from new ``x``/``edge_attr``.

        With no arguments this reproduces the parameters the graph was built from exactly.
        """
        return self.unflatten(self.to_flat(x, edge_attr))

    # ------------------------------------------------------------------ PyG
    def to_pyg(self, x: Tensor | None = None, edge_attr: Tensor | None = None) -> Any:
        """A ``torch_geometric.data.Data`` with features and all node/edge metadata.

        A list of these batches with ``torch_geometric.data.Batch.from_data_list``. Graphs of
        different architectures can share a batch when they were built with one feature layout
        (``from_module(model, kernel_grid=..., node_channels=..., edge_channels=...)``).
        """
        return NeuralGraphData(
            x=self.x if x is None else x,
            edge_index=self.edge_index,
            edge_attr=self.edge_attr if edge_attr is None else edge_attr,
            edge_kind=self.edge_kind,
            node_role=self.node_role,
            node_depth=self.node_depth,
            node_index=self.node_index,
            node_activation=self.node_activation,
            node_head=self.node_head,
            num_nodes=self.num_nodes,
        )

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        roles = {r.name.lower(): int((self.node_role == r).sum()) for r in Role if (self.node_role == r).any()}
        kinds = {k.name.lower(): int((self.edge_kind == k).sum()) for k in EdgeKind if (self.edge_kind == k).any()}
        acts = sorted({ACTIVATIONS[a] for a in self.node_activation.unique().tolist()})
        return (
            f"NeuralGraph(nodes={self.num_nodes} {roles}, edges={self.num_edges} {kinds}, "
            f"x={tuple(self.x.shape)}, edge_attr={tuple(self.edge_attr.shape)}, kernel_grid={self.kernel_grid}, "
            f"params={len(self.param_names)} tensors / {self.num_params} values, activations={acts})"
        )
