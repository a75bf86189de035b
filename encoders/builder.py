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

__all__ = ["ACTIVATIONS", "EdgeKind", "GraphBuilder", "ParamsLike", "Role", "named_tensors"]

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
        self._edges: list[tuple[Tensor, Tensor, int]] = []
        self._num_edges = 0
        self._bicliques: list[tuple[Tensor, Tensor, Tensor]] = []  # (sources, targets, edge ids)
        self._edge_constants: list[tuple[Tensor, int]] = []  # (edge ids, channel) with an identity kernel
        self._placements: list[_Placement] = []
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
        block, local = self._where(node_ids)
        local = local.reshape(node_ids.shape)
        fixed = any(self._unit_fixed[self._find(int(u))] for u in block["unit"][local.reshape(-1)].unique())
        for head, row in enumerate(local):
            block["unit"][row] = self._new_unit(self.block_of(node_ids), fixed)
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
        self._edges.append((src.reshape(-1), dst.reshape(-1), int(kind)))
        self._num_edges += src.numel()
        return ids

    def dense_edges(self, src: Tensor, dst: Tensor, kind: EdgeKind = EdgeKind.WEIGHT) -> Tensor:
        """All edges ``src[i] -> dst[j]``; returns ids ``[len(dst), len(src)]`` (weight-matrix order).

        The pair is also recorded as a *biclique*, so that neuron-level layers can aggregate over
        it in ``O(len(src) + len(dst))`` instead of ``O(len(src) * len(dst))``.
        """
        s = src.unsqueeze(0).expand(len(dst), len(src))
        d = dst.unsqueeze(1).expand(len(dst), len(src))
        ids = self.add_edges(s, d, kind)
        self._bicliques.append((src, dst, ids))
        return ids

    def identity_edges(self, src: Tensor, dst: Tensor, kind: EdgeKind) -> Tensor:
        """One-to-one edges ``src[k] -> dst[k]`` whose ends are permuted together (residual,
        normalization, gate, attention); returns ids ``[k]``."""
        if len(src) != len(dst):
            raise ValueError(f"one-to-one edges need equal sizes, got {len(src)} and {len(dst)}")
        ids = self.add_edges(src, dst, kind)
        self.tie(src, dst)
        if kind != EdgeKind.NORM:  # NORM edges carry gamma; the others carry no parameter
            self._edge_constants.append((ids, 0))
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
        self._placements.append(
            _Placement(name, shape, on_edge, entity, channel, position.expand(shape), layout)
        )

    # ----------------------------------------------------------------- finish
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
        architectures share one layout (e.g. a zoo padded to its largest kernel).
        """
        by_name = {p.name: p for p in self._placements}
        if len(by_name) != len(self._placements):
            raise ValueError("a parameter was placed twice")
        missing = [n for n, _ in params if n not in by_name]
        if missing:
            raise RuntimeError(f"internal error: parameters without a place: {missing}")
        kernel_grid = self._kernel_grid(kernel_grid)
        spatial = max((p.layout[1][0] for p in self._placements if p.layout[0] == "spatial"), default=1)
        slots = max(prod(kernel_grid), spatial, slots)
        edge_channels = max([edge_channels, *(int(p.channel.max()) + 1 for p in self._placements if p.on_edge)])
        node_channels = max([node_channels, *(int(p.channel.max()) + 1 for p in self._placements if not p.on_edge)])

        edge_pos, edge_slot, node_pos, node_slot = [], [], [], []
        offset = 0
        for name, _ in params:
            p = by_name[name]
            flat = torch.arange(offset, offset + prod(p.shape))
            offset += prod(p.shape)
            if p.on_edge:
                column = p.channel.reshape(-1) * slots + self._column(p, kernel_grid)
                edge_pos.append(flat)
                edge_slot.append(p.entity.reshape(-1) * edge_channels * slots + column)
            else:
                node_pos.append(flat)
                node_slot.append(p.entity.reshape(-1) * node_channels + p.channel.reshape(-1))
        def cat(xs: list[Tensor], dim: int = 0) -> Tensor:
            return torch.cat(xs, dim) if xs else torch.zeros((0,) if dim == 0 else (2, 0), dtype=torch.long)

        src = cat([e[0] for e in self._edges])
        dst = cat([e[1] for e in self._edges])
        kind = cat([torch.full((len(e[0]),), e[2]) for e in self._edges])
        edge_base = torch.zeros(self._num_edges, edge_channels * slots)
        centre = self._centre_column(kernel_grid)
        for ids, ch in self._edge_constants:
            edge_base[ids, ch * slots + centre] = 1.0

        in_biclique = torch.zeros(self._num_edges, dtype=torch.bool)
        for _, _, ids in self._bicliques:
            in_biclique[ids.reshape(-1)] = True
        biclique_src = cat([torch.stack([s, torch.full_like(s, i)]) for i, (s, _, _) in enumerate(self._bicliques)], 1)
        biclique_dst = cat([torch.stack([d, torch.full_like(d, i)]) for i, (_, d, _) in enumerate(self._bicliques)], 1)

        blocks = self._blocks
        node_block = cat([torch.full((len(b["ids"]),), i) for i, b in enumerate(blocks)])
        role = torch.tensor([b["role"] for b in blocks], dtype=torch.long)[node_block]
        role[cat([b["attention"] for b in blocks])] = Role.ATTENTION
        depth = torch.tensor([b["depth"] for b in blocks], dtype=torch.long)[node_block]
        act = torch.tensor([b["activation"] for b in blocks], dtype=torch.long)[node_block]
        node_index = cat([torch.arange(len(b["ids"])) for b in blocks])
        head = cat([b["head"] for b in blocks])
        # permutation groups: the root unit of each node's unit, -1 where that root is fixed
        root = torch.tensor([self._find(u) for u in range(len(self._unit_parent))], dtype=torch.long)
        fixed = torch.tensor(self._unit_fixed, dtype=torch.bool)
        node_unit = cat([b["unit"] for b in blocks])
        node_group = torch.where(fixed[root[node_unit]], -1, root[node_unit])
        # number units densely, in node order
        _, node_unit = node_unit.unique(return_inverse=True)
        return {
            "num_nodes": self.num_nodes,
            "edge_index": torch.stack([src, dst]) if len(src) else torch.zeros(2, 0, dtype=torch.long),
            "edge_kind": kind,
            "edge_base": edge_base,
            "biclique_src": biclique_src,
            "biclique_dst": biclique_dst,
            "edge_in_biclique": in_biclique,
            "node_role": role,
            "node_depth": depth,
            "node_block": node_block,
            "node_index": node_index,
            "node_activation": act,
            "node_head": head,
            "node_group": node_group,
            "node_unit": node_unit,
            "node_channels": node_channels,
            "edge_channels": edge_channels,
            "kernel_grid": kernel_grid,
            "slots": slots,
            "param_names": [n for n, _ in params],
            "param_shapes": [tuple(t.shape) for _, t in params],
            "edge_elem_pos": cat(edge_pos),
            "edge_elem_slot": cat(edge_slot),
            "node_elem_pos": cat(node_pos),
            "node_elem_slot": cat(node_slot),
        }

    def _kernel_grid(self, minimum: tuple[int, ...]) -> tuple[int, ...]:
        kernels = [minimum] + [p.layout[1] for p in self._placements if p.layout[0] == "kernel"]
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

    def _column(self, p: _Placement, grid: tuple[int, ...]) -> Tensor:
        """Feature column (within one channel) of every element of placement ``p``: ``[numel]``."""
        position = p.position.reshape(-1)
        if p.layout[0] == "spatial":
            return position
        if p.layout[0] == "none":
            return torch.full_like(position, self._centre_column(grid))
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
        return col
