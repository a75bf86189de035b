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
    ATTENTION = 3  # the (W_Q, W_K, W_V) entries joining an input neuron to an attention neuron
    OTHER = 4  # an element of a parameter that fits no layer template


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
    encoders need (depth, role, activation) and the permutation structure: blocks joined by
    residual or normalization edges must be permuted together (``tie``); blocks that hold input or
    output neurons cannot be permuted at all.
    """

    def __init__(self) -> None:
        self.num_nodes = 0
        self._blocks: list[dict] = []
        self._block_starts: list[int] = []
        self._node_block: list[Tensor] = []
        self._node_head: list[Tensor] = []
        self._edges: list[tuple[Tensor, Tensor, int]] = []
        self._num_edges = 0
        self._bicliques: list[tuple[Tensor, Tensor, Tensor]] = []  # (sources, targets, edge ids)
        self._edge_constants: list[tuple[Tensor, int]] = []  # (edge ids, channel) with an identity kernel
        self._placements: list[_Placement] = []
        self._parent: list[int] = []  # union-find over permutation groups
        self._group_of_block: list[int] = []

    # ----------------------------------------------------------------- nodes and edges
    def add_block(
        self, size: int, role: Role, depth: int, *, heads: int = 1, fixed: bool = False
    ) -> Tensor:
        """Create ``size`` nodes; returns their ids ``[size]``.

        ``heads > 1`` splits the block into equal head-sized permutation groups (attention):
        neurons permute only within their head, and their ``node_head`` records the head.
        """
        if size <= 0:
            raise ValueError(f"a layer needs at least one neuron, got {size}")
        if size % heads:
            raise ValueError(f"{size} neurons cannot be split into {heads} heads")
        block = len(self._blocks)
        ids = torch.arange(self.num_nodes, self.num_nodes + size)
        self.num_nodes += size
        self._block_starts.append(self.num_nodes - size)
        self._blocks.append({"ids": ids, "role": role, "depth": depth, "activation": 0})
        self._node_block.append(torch.full((size,), block))
        head = torch.arange(size) // (size // heads)
        self._node_head.append(head)
        groups = []
        for _ in range(heads):
            self._parent.append(len(self._parent))
            groups.append(self._parent[-1])
        self._group_of_block.append(groups[0] if heads == 1 else -1)
        self._blocks[-1]["groups"] = groups
        self._blocks[-1]["fixed"] = fixed or role in (Role.INPUT, Role.OTHER)
        return ids

    def block_of(self, node_ids: Tensor) -> int:
        """Block that holds the nodes ``node_ids`` (all in one block)."""
        return bisect_right(self._block_starts, int(node_ids[0])) - 1

    def depth_of(self, node_ids: Tensor) -> int:
        return self._blocks[self.block_of(node_ids)]["depth"]

    def set_activation(self, node_ids: Tensor, activation: str) -> None:
        """Record that the neurons ``node_ids`` (one whole block) pass through ``activation``."""
        name = activation if activation in ACTIVATIONS else "other"
        block = self._blocks[self.block_of(node_ids)]
        if block["role"] != Role.INPUT:
            block["activation"] = ACTIVATIONS.index(name)

    def mark_output(self, node_ids: Tensor) -> None:
        block = self._blocks[self.block_of(node_ids)]
        block["role"] = Role.OUTPUT if block["role"] in (Role.HIDDEN, Role.OUTPUT) else block["role"]
        block["fixed"] = True

    def tie(self, a: Tensor, b: Tensor) -> None:
        """Neurons ``a[k]`` and ``b[k]`` must be permuted together (residual / norm edges)."""
        ba, bb = self._blocks[self.block_of(a)], self._blocks[self.block_of(b)]
        if len(ba["groups"]) != 1 or len(bb["groups"]) != 1:
            raise ValueError("residual or normalization edges into attention neurons are not supported")
        ra, rb = self._find(ba["groups"][0]), self._find(bb["groups"][0])
        self._parent[ra] = rb

    def _find(self, g: int) -> int:
        while self._parent[g] != g:
            self._parent[g] = self._parent[self._parent[g]]
            g = self._parent[g]
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
        """One-to-one edges ``src[k] -> dst[k]`` (residual or normalization); returns ids ``[k]``."""
        if len(src) != len(dst):
            raise ValueError(f"one-to-one edges need equal sizes, got {len(src)} and {len(dst)}")
        ids = self.add_edges(src, dst, kind)
        self.tie(src, dst)
        if kind == EdgeKind.RESIDUAL:
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

        node_block = cat(self._node_block)
        blocks = self._blocks
        role = torch.tensor([b["role"] for b in blocks], dtype=torch.long)[node_block]
        depth = torch.tensor([b["depth"] for b in blocks], dtype=torch.long)[node_block]
        act = torch.tensor([b["activation"] for b in blocks], dtype=torch.long)[node_block]
        node_index = cat([torch.arange(len(b["ids"])) for b in blocks])
        head = cat(self._node_head)
        # permutation groups: -1 where fixed; a group is fixed if any of its blocks is
        fixed_roots = {self._find(g) for b in blocks if b["fixed"] for g in b["groups"]}
        node_group = torch.empty(self.num_nodes, dtype=torch.long)
        for b in blocks:
            roots = torch.tensor([self._find(g) for g in b["groups"]])
            per_node = roots[torch.arange(len(b["ids"])) // (len(b["ids"]) // len(roots))]
            if any(int(r) in fixed_roots for r in roots):
                per_node = torch.full_like(per_node, -1)
            node_group[b["ids"]] = per_node
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
