"""Incremental construction of a :class:`~encoders.graph.NeuralGraph`.

Both graph constructors (tracing a module, chaining parameter shapes) describe a network to a
:class:`GraphBuilder` in the same vocabulary — blocks of neurons, edges between them, and where each
parameter element lives — and :meth:`GraphBuilder.finish` turns that into flat index tensors once.
:func:`named_tensors` normalises the parameter lists they accept. Nothing here imports
:mod:`encoders.graph`; :mod:`encoders.build` joins the two.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from math import prod

import torch
from torch import Tensor

__all__ = ["ACTIVATIONS", "EdgeKind", "GraphBuilder", "Neighbourhood", "ParamsLike", "Role", "named_tensors"]

# what the constructors accept as a parameter list
ParamsLike = Iterable[Tensor] | Iterable[tuple[str, Tensor]] | Mapping[str, Tensor]

# Activation types a layer can carry; index 0 is "no activation". Encoders embed these ids.
ACTIVATIONS: tuple[str, ...] = (
    "none", "relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "sine", "softplus", "elu", "other",
)


def named_tensors(params: ParamsLike) -> list[tuple[str, Tensor]]:
    """Normalise a parameter list: ``[(name, tensor)]``; plain tensors are named ``"0"``, ``"1"``, ..."""
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    if not items:
        raise ValueError("empty parameter list: a neural graph needs at least one parameter")
    named = [(str(i), t) if isinstance(t, Tensor) else tuple(t) for i, t in enumerate(items)]
    for name, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"parameter {name!r} is a {type(t).__name__}, expected a torch.Tensor")
        if not t.is_floating_point():
            raise TypeError(f"parameter {name!r} has dtype {t.dtype}; neural graphs need floating-point tensors")
        if t.numel() == 0:
            raise ValueError(f"parameter {name!r} has no elements (shape {tuple(t.shape)})")
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError("parameter names must be unique")
    return named


class Role(IntEnum):
    """What a node stands for."""

    INPUT = 0  # an input neuron / channel / token of the network
    HIDDEN = 1  # a hidden neuron or channel
    OUTPUT = 2  # an output neuron of the network
    NORM = 3  # a neuron of an affine normalization layer (gamma on the edge, beta on the node)
    ATTENTION = 4  # a query/key/value neuron of a multi-head attention layer
    OTHER = 5  # an element of a parameter that fits no layer template


class EdgeKind(IntEnum):
    """What an edge stands for."""

    WEIGHT = 0  # a weight (or a kernel slice) of a linear / convolution / embedding layer
    RESIDUAL = 1  # an identity connection from a skip path (constant identity-kernel feature)
    NORM = 2  # the one-to-one scale gamma of a normalization layer
    ATTENTION = 3  # joins a key neuron to the query neuron it is multiplied with (constant feature)
    OTHER = 4  # an element of a parameter that fits no layer template
    GATE = 5  # joins a GLU's gate neuron to the neuron it multiplies (constant feature)


@dataclass
class _Placement:
    """Where the elements of one parameter live (resolved to feature columns in ``finish``)."""

    name: str
    shape: tuple[int, ...]
    on_edge: bool
    entity: Tensor  # [*shape] edge or node id of every element
    channel: Tensor  # [*shape] feature channel of every element
    position: Tensor  # [*shape] position inside the kernel slot (see ``layout``)
    layout: tuple[str, tuple[int, ...]]  # ("kernel", kernel shape) or ("spatial", (S,)) or ("none", ())


@dataclass
class Neighbourhood:
    """The graph's connectivity in ``O(N)`` memory: dense layers as bicliques, the rest as edges.

    ``biclique_src: [2, S]`` and ``biclique_dst: [2, D]`` list (node, biclique) memberships;
    ``sparse_edges: [2, k]`` the one-to-one edges; ``degrees: [N, 2]`` in- and out-degrees over
    all edges.
    """

    num_nodes: int
    biclique_src: Tensor
    biclique_dst: Tensor
    sparse_edges: Tensor
    degrees: Tensor


@dataclass
class _EdgeGroup:
    """Edges added together: a biclique (every source to every target, ids in weight-matrix order
    ``[target, source]``) or one-to-one pairs. Bicliques are never stored edge by edge."""

    start: int  # id of the first edge
    kind: int
    src: Tensor  # [S] sources (biclique) or [k] pair sources
    dst: Tensor  # [D] targets (biclique) or [k] pair targets
    biclique: bool
    ids: Tensor | None = None  # a biclique's id grid [D, S], which placements view

    @property
    def size(self) -> int:
        return len(self.src) * len(self.dst) if self.biclique else len(self.src)

    def endpoints(self, local: Tensor) -> tuple[Tensor, Tensor]:
        """Source and target nodes of the edges ``start + local``."""
        if self.biclique:
            return self.src[local % len(self.src)], self.dst[local // len(self.src)]
        return self.src[local], self.dst[local]

    def write(self, edge_index: Tensor) -> None:
        """Fill ``edge_index[:, start:start + size]``."""
        block = edge_index[:, self.start:self.start + self.size]
        if self.biclique:
            shape = (len(self.dst), len(self.src))
            block[0].view(shape).copy_(self.src.expand(shape))
            block[1].view(shape).copy_(self.dst.unsqueeze(1).expand(shape))
        else:
            block[0].copy_(self.src)
            block[1].copy_(self.dst)


def _one_number(values: Tensor) -> bool:
    """Whether ``values`` is one number expanded (a placement's constant channel)."""
    return all(s == 0 for s in values.stride())


def _largest(values: Tensor) -> int:
    """``values.max()``, without reading every element of an expanded number."""
    return int(values.reshape(-1)[0]) if _one_number(values) else int(values.max())


def _compact(values: Tensor, rows: int, cols: int) -> Tensor:
    """``values`` (broadcast to a parameter's shape) as ``[1, 1]`` if it is one expanded number,
    else as ``[rows, cols]``."""
    return values.reshape(-1)[:1].view(1, 1) if _one_number(values) else values.reshape(rows, cols)


def _strided_ends(group: _EdgeGroup, entity: Tensor, rows: int, cols: int) -> tuple[Tensor, Tensor] | None:
    """Source and target neurons of ``entity``, a strided view of ``group``'s id grid ``[D, S]``,
    seen as ``[rows, cols]`` (dim 0 the rows, the other dims the columns), when each depends on the
    row or on the column only (a weight, its transpose, a kernel's expansion); else ``None``.

    The element at index ``x`` holds grid entry ``o + sum_k x_k * stride_k``: ``o`` plus a row
    part ``a`` and a column part ``b``, whose quotient by ``S`` is the target and remainder the
    source.
    """
    width = len(group.src)
    offset = entity.storage_offset() - group.ids.storage_offset()
    a = torch.arange(entity.shape[0]) * entity.stride(0)
    b = torch.zeros((), dtype=torch.long)
    for size, stride in zip(entity.shape[1:], entity.stride()[1:]):
        b = (b.unsqueeze(-1) + torch.arange(size) * stride)
    b = b.reshape(-1)
    base, rem = divmod(offset, width)
    if bool((a % width == 0).all()) and rem + int(b.max()) < width:  # target by row, source by column
        return group.src[rem + b].view(1, cols), group.dst[base + a // width].view(rows, 1)
    if bool((b % width == 0).all()) and rem + int(a.max()) < width:  # source by row, target by column
        return group.src[rem + a].view(rows, 1), group.dst[base + b // width].view(1, cols)
    return None


class GraphBuilder:
    """Accumulates blocks of nodes, edges and parameter placements.

    A *block* is a set of nodes created together (one layer's neurons). Blocks carry the metadata
    encoders need (depth, role, activation). The permutation structure lives on *units*: a unit is
    a set of nodes that a symmetry may reorder (a whole layer, or one attention head of a
    projection, :meth:`split_heads`). Units joined by residual, normalization, gate or attention
    edges are permuted together (:meth:`tie`), each by the same reordering of its positions.
    Units that hold input or output neurons, or whose neurons the network mixes by position
    (:meth:`fix`, e.g. rotary embeddings), are never permuted, nor is anything tied to them.
    """

    def __init__(self) -> None:
        self.num_nodes = 0
        self._blocks: list[dict] = []
        self._block_starts: list[int] = []
        self._edges: list[_EdgeGroup] = []
        self._num_edges = 0
        self._grids: dict[int, _EdgeGroup] = {}  # storage of each biclique's id grid -> its group
        self._placements: dict[str, _Placement] = {}
        self._unit_parent: list[int] = []  # union-find over units
        self._unit_fixed: list[bool] = []
        self._unit_block: list[int] = []

    # ----------------------------------------------------------------- nodes and edges
    def add_block(self, size: int, role: Role, depth: int, *, fixed: bool = False) -> Tensor:
        """Create ``size`` nodes (one unit); returns their ids ``[size]``."""
        if size <= 0:
            raise ValueError(f"a layer needs at least one neuron, got {size}")
        ids = torch.arange(self.num_nodes, self.num_nodes + size)
        self.num_nodes += size
        self._block_starts.append(self.num_nodes - size)
        self._blocks.append({
            "ids": ids, "role": role, "depth": depth, "activation": 0,
            "unit": torch.full((size,), self._new_unit(len(self._blocks), fixed or role in (Role.INPUT, Role.OTHER))),
            "head": torch.zeros(size, dtype=torch.long), "attention": torch.zeros(size, dtype=torch.bool),
        })
        return ids

    def _new_unit(self, block: int, fixed: bool) -> int:
        self._unit_parent.append(len(self._unit_parent))
        self._unit_fixed.append(fixed)
        self._unit_block.append(block)
        return len(self._unit_parent) - 1

    def block_of(self, node_ids: Tensor) -> int:
        """Block that holds the nodes ``node_ids`` (all in one block)."""
        return bisect_right(self._block_starts, int(node_ids.reshape(-1)[0])) - 1

    def depth_of(self, node_ids: Tensor) -> int:
        return self._blocks[self.block_of(node_ids)]["depth"]

    def set_activation(self, node_ids: Tensor, activation: str) -> None:
        """Record that the neurons ``node_ids`` (of one block) pass through ``activation``.

        A block given two different activations (a composite such as GPT-2's tanh-GELU written out
        elementwise) records ``"other"``.
        """
        name = activation if activation in ACTIVATIONS else "other"
        block = self._blocks[self.block_of(node_ids)]
        if block["role"] == Role.INPUT:
            return
        index = ACTIVATIONS.index(name)
        block["activation"] = index if block["activation"] in (0, index) else ACTIVATIONS.index("other")

    def mark_output(self, node_ids: Tensor) -> None:
        block = self._blocks[self.block_of(node_ids)]
        block["role"] = Role.OUTPUT if block["role"] in (Role.HIDDEN, Role.OUTPUT) else block["role"]
        self.fix(block["ids"])

    def _where(self, node_ids: Tensor) -> tuple[dict, Tensor]:
        """The block of ``node_ids`` and their positions in it."""
        block = self._blocks[self.block_of(node_ids)]
        local = node_ids.reshape(-1) - block["ids"][0]
        if (local < 0).any() or (local >= len(block["ids"])).any():
            raise ValueError("internal error: nodes of several blocks where one block was expected")
        return block, local

    def units_of(self, node_ids: Tensor) -> Tensor:
        """Unit of every node in ``node_ids`` (same shape)."""
        flat = node_ids.reshape(-1)
        blocks = torch.searchsorted(torch.tensor(self._block_starts), flat, right=True) - 1
        out = torch.empty_like(flat)
        for b in blocks.unique().tolist():
            mask = blocks == b
            out[mask] = self._blocks[b]["unit"][flat[mask] - self._block_starts[b]]
        return out.reshape(node_ids.shape)

    def split_heads(self, node_ids: Tensor) -> None:
        """Make every row of ``node_ids [heads, head_dim]`` (nodes of one block) its own unit: the
        neurons of one attention head, which a symmetry may reorder within the head only. They get
        the attention role and ``node_head`` = row index."""
        index = self.block_of(node_ids)
        block, local = self._where(node_ids)
        local = local.reshape(node_ids.shape)
        fixed = any(self._unit_fixed[self._find(int(u))] for u in block["unit"][local.reshape(-1)].unique())
        for head, row in enumerate(local):
            block["unit"][row] = self._new_unit(index, fixed)
            block["head"][row] = head
            block["attention"][row] = True

    def fix(self, node_ids: Tensor) -> None:
        """No symmetry moves the nodes ``node_ids`` (nor anything tied to them)."""
        for u in self.units_of(node_ids).unique().tolist():
            self._unit_fixed[self._find(u)] = True

    def tie(self, a: Tensor, b: Tensor) -> None:
        """Neurons ``a[k]`` and ``b[k]`` must be permuted together (residual / norm / gate edges).

        A tie is exact when ``a`` and ``b`` cover whole units in the same order; otherwise (a
        partial or reordered correspondence, which no supported layer produces) both sides are
        fixed, which is always a valid, if smaller, symmetry.
        """
        ua, ub = self.units_of(a).reshape(-1), self.units_of(b).reshape(-1)
        if self._aligned(a.reshape(-1), ua) and self._aligned(b.reshape(-1), ub):
            for x, y in torch.stack([ua, ub], 1).unique(dim=0).tolist():
                rx, ry = self._find(x), self._find(y)
                if rx != ry:
                    self._unit_parent[rx] = ry
                    self._unit_fixed[ry] = self._unit_fixed[ry] or self._unit_fixed[rx]
        else:
            self.fix(a)
            self.fix(b)

    def _aligned(self, ids: Tensor, units: Tensor) -> bool:
        """``ids`` list whole units, each in ascending node order, and all of one size."""
        sizes = set()
        for u in units.unique().tolist():
            mine = ids[units == u]
            members = self._unit_members(u)
            if not torch.equal(mine, members):
                return False
            sizes.add(len(members))
        return len(sizes) == 1

    def _unit_members(self, unit: int) -> Tensor:
        block = self._blocks[self._unit_block[unit]]
        return block["ids"][block["unit"] == unit]

    def _find(self, g: int) -> int:
        while self._unit_parent[g] != g:
            self._unit_parent[g] = self._unit_parent[self._unit_parent[g]]
            g = self._unit_parent[g]
        return g

    def add_edges(self, src: Tensor, dst: Tensor, kind: EdgeKind) -> Tensor:
        """Add edges ``src[k] -> dst[k]``; returns their ids (same shape as ``src``)."""
        ids = torch.arange(self._num_edges, self._num_edges + src.numel()).reshape(src.shape)
        self._edges.append(_EdgeGroup(self._num_edges, int(kind), src.reshape(-1), dst.reshape(-1), biclique=False))
        self._num_edges += src.numel()
        return ids

    def dense_edges(self, src: Tensor, dst: Tensor, kind: EdgeKind = EdgeKind.WEIGHT) -> Tensor:
        """All edges ``src[i] -> dst[j]``; returns ids ``[len(dst), len(src)]`` (weight-matrix order).

        The pair is recorded as a *biclique*: stored as its two node lists, and aggregated over by
        neuron-level layers in ``O(len(src) + len(dst))`` instead of ``O(len(src) * len(dst))``.
        """
        ids = torch.arange(self._num_edges, self._num_edges + len(src) * len(dst)).view(len(dst), len(src))
        self._edges.append(_EdgeGroup(self._num_edges, int(kind), src, dst, biclique=True, ids=ids))
        self._grids[ids.untyped_storage().data_ptr()] = self._edges[-1]
        self._num_edges += ids.numel()
        return ids

    def identity_edges(self, src: Tensor, dst: Tensor, kind: EdgeKind) -> Tensor:
        """One-to-one edges ``src[k] -> dst[k]`` whose ends are permuted together (residual,
        normalization, gate, attention); returns ids ``[k]``."""
        if len(src) != len(dst):
            raise ValueError(f"one-to-one edges need equal sizes, got {len(src)} and {len(dst)}")
        ids = self.add_edges(src, dst, kind)
        self.tie(src, dst)
        return ids

    # ----------------------------------------------------------------- parameters
    def place(
        self,
        name: str,
        tensor: Tensor,
        *,
        on_edge: bool,
        entity: Tensor,
        channel: Tensor | int = 0,
        layout: tuple[str, tuple[int, ...]] = ("none", ()),
        position: Tensor | None = None,
    ) -> None:
        """Record that element ``k`` of ``tensor`` lives on edge/node ``entity[k]`` at ``channel[k]``.

        ``entity``/``channel``/``position`` broadcast to ``tensor.shape``. For ``layout[0] ==
        "kernel"`` the trailing ``len(layout[1])`` dims of the tensor are the kernel and positions
        are derived; for ``"spatial"`` ``position`` gives the spatial index of each element.
        """
        shape = tuple(tensor.shape)
        entity = entity.expand(shape)
        channel = torch.as_tensor(channel).expand(shape)
        if layout[0] == "kernel":
            k = layout[1]
            position = torch.arange(prod(k)).reshape(k).expand(shape)
        elif position is None:
            position = torch.zeros((), dtype=torch.long).expand(shape)
        if name in self._placements:
            raise ValueError(f"parameter {name!r} was placed twice")
        self._placements[name] = _Placement(name, shape, on_edge, entity, channel, position.expand(shape), layout)

    # ----------------------------------------------------------------- finish
    def _check_placed(self, params: list[tuple[str, Tensor]]) -> None:
        missing = [n for n, _ in params if n not in self._placements]
        if missing:
            raise RuntimeError(f"internal error: parameters without a place: {missing}")

    def node_fields(self) -> dict[str, Tensor | int]:
        """Per-node metadata (``O(N)``): the ``node_*`` fields of a ``NeuralGraph``."""
        blocks = self._blocks
        node_block = torch.cat([torch.full((len(b["ids"]),), i) for i, b in enumerate(blocks)])
        role = torch.tensor([b["role"] for b in blocks], dtype=torch.long)[node_block]
        role[torch.cat([b["attention"] for b in blocks])] = Role.ATTENTION
        # permutation groups: the root unit of each node's unit, -1 where that root is fixed
        root = torch.tensor([self._find(u) for u in range(len(self._unit_parent))], dtype=torch.long)
        fixed = torch.tensor(self._unit_fixed, dtype=torch.bool)
        unit = torch.cat([b["unit"] for b in blocks])
        return {
            "num_nodes": self.num_nodes,
            "node_role": role,
            "node_depth": torch.tensor([b["depth"] for b in blocks], dtype=torch.long)[node_block],
            "node_block": node_block,
            "node_index": torch.cat([torch.arange(len(b["ids"])) for b in blocks]),
            "node_activation": torch.tensor([b["activation"] for b in blocks], dtype=torch.long)[node_block],
            "node_head": torch.cat([b["head"] for b in blocks]),
            "node_group": torch.where(fixed[root[unit]], -1, root[unit]),
            "node_unit": unit.unique(return_inverse=True)[1],  # numbered densely, in node order
        }

    def neighbourhood(self) -> Neighbourhood:
        """Who is joined to whom, without per-edge arrays for dense layers (``O(N)`` plus the
        one-to-one edges): what neuron-level aggregation needs."""
        cliques = [g for g in self._edges if g.biclique]
        pairs = [g for g in self._edges if not g.biclique]
        members = [(torch.stack([g.src, torch.full_like(g.src, i)]), torch.stack([g.dst, torch.full_like(g.dst, i)]))
                   for i, g in enumerate(cliques)]
        empty = torch.zeros(2, 0, dtype=torch.long)
        sparse = torch.cat([torch.stack([g.src, g.dst]) for g in pairs], 1) if pairs else empty
        degrees = torch.zeros(self.num_nodes, 2)
        for g in cliques:
            degrees[g.dst, 0] += len(g.src)
            degrees[g.src, 1] += len(g.dst)
        degrees[:, 0].index_add_(0, sparse[1], torch.ones(sparse.shape[1]))
        degrees[:, 1].index_add_(0, sparse[0], torch.ones(sparse.shape[1]))
        return Neighbourhood(
            num_nodes=self.num_nodes,
            biclique_src=torch.cat([m[0] for m in members], 1) if members else empty,
            biclique_dst=torch.cat([m[1] for m in members], 1) if members else empty,
            sparse_edges=sparse,
            degrees=degrees,
        )

    def element_neurons(self, name: str, rows: int, cols: int) -> tuple[bool, Tensor, Tensor, Tensor, Tensor]:
        """Where the elements of parameter ``name``, seen as a ``[rows, cols]`` matrix, live, without
        building the graph: ``(on_edge, source, target, edge_kind, channel)``.

        Each is a tensor that broadcasts to ``[rows, cols]``: ``[rows, 1]`` where it depends on the
        row only, ``[1, cols]`` on the column only, ``[1, 1]`` if constant. A dense layer's weight
        (a view of its biclique's id grid) is read from the view's strides in ``O(rows + cols)``;
        other placements element by element. Source and target are the element's node for node
        parameters, whose edge kind is -1.
        """
        p = self._placements[name]
        channel = _compact(p.channel, rows, cols)
        if not p.on_edge:
            nodes = p.entity.reshape(rows, cols)
            return False, nodes, nodes, torch.full((1, 1), -1), channel
        group = self._grids.get(p.entity.untyped_storage().data_ptr())
        ends = None if group is None or p.entity.dim() < 2 else _strided_ends(group, p.entity, rows, cols)
        if ends is not None:
            return True, *ends, torch.full((1, 1), group.kind), channel
        edges = p.entity.reshape(-1)
        source, target, kind = torch.empty_like(edges), torch.empty_like(edges), torch.empty_like(edges)
        starts = torch.tensor([g.start for g in self._edges])
        group_of = torch.searchsorted(starts, edges, right=True) - 1
        for k in group_of.unique().tolist():
            mask = group_of == k
            g = self._edges[k]
            source[mask], target[mask] = g.endpoints(edges[mask] - g.start)
            kind[mask] = g.kind
        return True, source.view(rows, cols), target.view(rows, cols), kind.view(rows, cols), channel

    def finish(
        self,
        params: list[tuple[str, Tensor]],
        *,
        kernel_grid: tuple[int, ...] = (),
        node_channels: int = 1,
        edge_channels: int = 1,
        slots: int = 1,
    ) -> dict:
        """Resolve placements into flat index maps; returns the fields of a ``NeuralGraph``.

        The keyword arguments are minimum feature layouts, so that graphs of different
        architectures share one layout (e.g. a zoo padded to its largest kernel). Per-edge and
        per-element arrays are allocated once and filled in place: for a large model they are
        most of the memory and time.
        """
        self._check_placed(params)
        kernel_grid = self._kernel_grid(kernel_grid)
        spatial = max((p.layout[1][0] for p in self._placements.values() if p.layout[0] == "spatial"), default=1)
        slots = max(prod(kernel_grid), spatial, slots)
        placements = list(self._placements.values())
        edge_channels = max([edge_channels, *(_largest(p.channel) + 1 for p in placements if p.on_edge)])
        node_channels = max([node_channels, *(_largest(p.channel) + 1 for p in placements if not p.on_edge)])

        num_edges = self._num_edges
        edge_index = torch.empty(2, num_edges, dtype=torch.long)
        kind = torch.empty(num_edges, dtype=torch.long)
        in_biclique = torch.empty(num_edges, dtype=torch.bool)
        for g in self._edges:
            g.write(edge_index)
            kind[g.start:g.start + g.size] = g.kind
            in_biclique[g.start:g.start + g.size] = g.biclique
        edge_base = torch.zeros(num_edges, edge_channels * slots)
        centre = self._centre_column(kernel_grid)
        for g in self._edges:
            if g.kind in (EdgeKind.RESIDUAL, EdgeKind.GATE, EdgeKind.ATTENTION):  # no weight: a constant kernel
                edge_base[g.start:g.start + g.size, centre] = 1.0

        on_edge = sum(prod(p.shape) for p in self._placements.values() if p.on_edge)
        edge_pos, edge_slot = torch.empty(on_edge, dtype=torch.long), torch.empty(on_edge, dtype=torch.long)
        node_pos, node_slot = [], []
        offset = filled = 0
        for name, _ in params:
            p = self._placements[name]
            n = prod(p.shape)
            if p.on_edge:
                torch.arange(offset, offset + n, out=edge_pos[filled:filled + n])
                slot = edge_slot[filled:filled + n].view(p.shape)  # read the (strided) entity once
                if edge_channels * slots > 1:
                    torch.mul(p.entity, edge_channels * slots, out=slot)
                else:
                    slot.copy_(p.entity)
                column = self._column(p, kernel_grid, slots)
                if not isinstance(column, int) or column:
                    slot.view(-1).add_(column)
                filled += n
            else:
                node_pos.append(torch.arange(offset, offset + n))
                node_slot.append(p.entity.reshape(-1) * node_channels + p.channel.reshape(-1))
            offset += n
        empty = torch.zeros(0, dtype=torch.long)
        neighbourhood = self.neighbourhood()
        return {
            **self.node_fields(),
            "edge_index": edge_index,
            "edge_kind": kind,
            "edge_base": edge_base,
            "biclique_src": neighbourhood.biclique_src,
            "biclique_dst": neighbourhood.biclique_dst,
            "edge_in_biclique": in_biclique,
            "node_channels": node_channels,
            "edge_channels": edge_channels,
            "kernel_grid": kernel_grid,
            "slots": slots,
            "param_names": [n for n, _ in params],
            "param_shapes": [tuple(t.shape) for _, t in params],
            "edge_elem_pos": edge_pos,
            "edge_elem_slot": edge_slot,
            "node_elem_pos": torch.cat(node_pos) if node_pos else empty,
            "node_elem_slot": torch.cat(node_slot) if node_slot else empty,
        }

    def _kernel_grid(self, minimum: tuple[int, ...]) -> tuple[int, ...]:
        kernels = [minimum] + [p.layout[1] for p in self._placements.values() if p.layout[0] == "kernel"]
        ndim = max((len(k) for k in kernels), default=0)
        grid = [1] * ndim
        for k in kernels:
            for i, size in enumerate((1,) * (ndim - len(k)) + tuple(k)):
                grid[i] = max(grid[i], size)
        return tuple(grid)

    def _centre_column(self, grid: tuple[int, ...]) -> int:
        """Column of a 1x..x1 kernel (a linear weight) centred in the grid."""
        col = 0
        for size in grid:
            col = col * size + (size - 1) // 2
        return col

    def _column(self, p: _Placement, grid: tuple[int, ...], slots: int) -> Tensor | int:
        """Feature column of every element of placement ``p`` among its edge's ``channels * slots``:
        ``[numel]``, or one number where all elements share it (a linear weight on channel 0)."""
        channel = p.channel.reshape(-1) * slots if _largest(p.channel) > 0 else 0
        if p.layout[0] == "none":
            return channel + self._centre_column(grid)
        position = p.position.reshape(-1)
        if p.layout[0] == "spatial":
            return channel + position
        k = (1,) * (len(grid) - len(p.layout[1])) + tuple(p.layout[1])
        # unravel the position inside the kernel, shift to the centred place, ravel in the grid
        col = torch.zeros_like(position)
        rest = position.clone()
        coords = []
        for size in reversed(k):
            coords.append(rest % size)
            rest = rest // size
        for size, g, c in zip(k, grid, reversed(coords)):
            col = col * g + c + (g - size) // 2
        return channel + col
