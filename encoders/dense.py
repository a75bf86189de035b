"""Same-architecture batches as dense tensors: the encoders' fast path for model zoos.

A zoo holds thousands of networks of one architecture. Their neural graphs share every index, so
a batch of ``B`` of them needs no PyG batching: node features are ``[B, N, d]`` and edge features
``[B, E, d]``, and every dense layer connection (a *block*: all ``S`` source neurons to all ``D``
target neurons) is a view ``[B, D, S, d]`` of the edge tensor. Message passing over a block is then
broadcasting and a reduction over one axis, instead of gathers, a sort and segment reductions over
``B * E`` edges.

Every layer of the encoders keeps its sparse ``forward`` (any architectures in a batch, the
reference) and gains a ``forward_dense`` over a :class:`DenseLayout`, with the same parameters;
tests check that both agree to float tolerance. :func:`dense_layout` says why a graph has no
dense layout (e.g. residual edges), so callers can fall back to the sparse path.

Block requirements (what :func:`dense_layout` checks): every edge belongs to one biclique, each
biclique's sources and targets are contiguous node ranges and its edges one contiguous run in
target-major order (``edge = start + i * S + j`` for target ``i``, source ``j``), and no node is
the target of two blocks or the source of two blocks (so each node aggregates over one block per
direction). Graphs of ``nn.Sequential`` MLPs and CNNs built by :class:`~encoders.NeuralGraph`
meet them.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from encoders.graph import NeuralGraph

__all__ = ["Block", "DenseGraphs", "DenseLayout", "dense_layout"]


@dataclass(frozen=True)
class Block:
    """One dense connection: sources ``src`` (``S`` nodes) to targets ``dst`` (``D`` nodes), its
    ``D * S`` edges at ``edges`` in target-major order."""

    src: slice
    dst: slice
    edges: slice

    @property
    def shape(self) -> tuple[int, int]:
        """``(D, S)``."""
        return self.dst.stop - self.dst.start, self.src.stop - self.src.start


@dataclass(frozen=True, eq=False)
class DenseLayout:
    """The blocks of one architecture's neural graph and its node and edge metadata.

    ``blocks`` are ordered by edge position and tile ``[0, E)``. ``linked [N, N]`` is true where
    two nodes share an edge (either direction) or are the same node, the pairs NG-T's dense
    attention does not count as unlinked. Metadata tensors are ``[N]`` (nodes) and ``[E]`` (edges),
    as on ``NeuralGraph.to_pyg()``.
    """

    num_nodes: int
    num_edges: int
    blocks: tuple[Block, ...]
    node_role: Tensor
    node_depth: Tensor
    node_index: Tensor
    node_activation: Tensor
    node_head: Tensor
    edge_kind: Tensor

    @cached_property
    def linked(self) -> Tensor:
        linked = torch.eye(self.num_nodes, dtype=torch.bool, device=self.node_role.device)
        for block in self.blocks:
            linked[block.dst, block.src] = True
            linked[block.src, block.dst] = True
        return linked

    def to(self, device: torch.device | str) -> DenseLayout:
        """This layout on ``device``: itself when already there (so its cached ``linked`` is reused
        by every batch), else a copy."""
        if self.node_role.device == torch.device(device):
            return self
        tensors = {name: getattr(self, name).to(device) for name in
                   ("node_role", "node_depth", "node_index", "node_activation", "node_head", "edge_kind")}
        return DenseLayout(self.num_nodes, self.num_edges, self.blocks, **tensors)

    def split(self, edge_values: Tensor) -> list[Tensor]:
        """``[B, E, c]`` -> each block's ``[B, D, S, c]``, in block order.

        One ``torch.split`` (views) rather than a slice per block: the gradient of a slice is a
        full-size zero tensor per block, that of a split one concatenation.
        """
        parts = edge_values.split([block.edges.stop - block.edges.start for block in self.blocks], dim=1)
        return [part.unflatten(1, block.shape) for part, block in zip(parts, self.blocks)]

    def gather_nodes(self, pieces: list[tuple[slice, Tensor]], fill: float = 0.0) -> Tensor:
        """Per-node values ``[B, N, c]`` from ``(node range, [B, n, c])`` pieces covering disjoint
        ranges; nodes no piece covers get ``fill``. Differentiable (a concatenation)."""
        pieces = sorted(pieces, key=lambda p: p[0].start)
        first = pieces[0][1]
        gap = lambda n: first.new_full((first.shape[0], n, first.shape[-1]), fill)  # noqa: E731
        out, at = [], 0
        for nodes, values in pieces:
            if nodes.start > at:
                out.append(gap(nodes.start - at))
            out.append(values)
            at = nodes.stop
        if at < self.num_nodes:
            out.append(gap(self.num_nodes - at))
        return torch.cat(out, dim=1)


def _range(ids: Tensor, what: str) -> slice:
    ids = ids.sort().values
    start = int(ids[0])
    if not torch.equal(ids, torch.arange(start, start + len(ids))):
        raise ValueError(f"the {what} of a biclique are not a contiguous node range")
    return slice(start, start + len(ids))


def _layout(graph: NeuralGraph) -> DenseLayout:
    if not bool(graph.edge_in_biclique.all()):
        raise ValueError(f"{int((~graph.edge_in_biclique).sum())} edges are outside dense layer connections "
                         "(residual, normalization or attention edges)")
    src_id, src_block = graph.biclique_src
    dst_id, dst_block = graph.biclique_dst
    num_blocks = int(src_block.max()) + 1 if src_block.numel() else 0
    key = graph.edge_index[0] * graph.num_nodes + graph.edge_index[1]
    position = {int(k): e for e, k in enumerate(key.tolist())}
    if len(position) != graph.num_edges:
        raise ValueError("the graph has parallel edges")
    blocks = []
    for b in range(num_blocks):
        src, dst = _range(src_id[src_block == b], "sources"), _range(dst_id[dst_block == b], "targets")
        start = position.get(src.start * graph.num_nodes + dst.start)
        d, s = dst.stop - dst.start, src.stop - src.start
        expected_src = torch.arange(src.start, src.stop).repeat(d)
        expected_dst = torch.arange(dst.start, dst.stop).repeat_interleave(s)
        run = graph.edge_index[:, start:start + d * s] if start is not None else None
        if run is None or run.shape[1] != d * s or not torch.equal(run, torch.stack([expected_src, expected_dst])):
            raise ValueError("a biclique's edges are not one contiguous target-major run")
        blocks.append(Block(src, dst, slice(start, start + d * s)))
    blocks.sort(key=lambda blk: blk.edges.start)
    for side in ("src", "dst"):
        covered = torch.zeros(graph.num_nodes, dtype=torch.long)
        for blk in blocks:
            covered[getattr(blk, side)] += 1
        if bool((covered > 1).any()):
            role = "target" if side == "dst" else "source"
            raise ValueError(f"a node is the {role} of two dense layer connections")
    if sum(blk.edges.stop - blk.edges.start for blk in blocks) != graph.num_edges:
        raise ValueError("the dense layer connections do not cover every edge")
    return DenseLayout(graph.num_nodes, graph.num_edges, tuple(blocks), graph.node_role, graph.node_depth,
                       graph.node_index, graph.node_activation, graph.node_head, graph.edge_kind)


_LAYOUTS: weakref.WeakKeyDictionary[NeuralGraph, DenseLayout] = weakref.WeakKeyDictionary()


def dense_layout(graph: NeuralGraph) -> DenseLayout:
    """The :class:`DenseLayout` of ``graph``'s architecture (cached per graph object).

    Raises ``ValueError`` saying which requirement (see the module docstring) the graph misses;
    use the sparse path for such graphs.
    """
    if graph not in _LAYOUTS:
        try:
            _LAYOUTS[graph] = _layout(graph)
        except ValueError as err:
            raise ValueError(f"no dense layout for this neural graph: {err}; use the sparse (PyG) path") from None
    return _LAYOUTS[graph]


@dataclass
class DenseGraphs:
    """A batch of ``B`` neural graphs of one architecture: ``x [B, N, Cn]``, ``edge_attr [B, E, Ce*K]``.

    Pass it to an encoder where a PyG ``Batch`` would go; the encoder then runs its dense path.
    """

    x: Tensor
    edge_attr: Tensor
    layout: DenseLayout

    @classmethod
    def from_flat(cls, graph: NeuralGraph, flat: Tensor) -> DenseGraphs:
        """Features of ``B`` networks of ``graph``'s architecture from their flat parameters ``[B, P]``
        (graph order, as ``graph.flatten``); differentiable w.r.t. ``flat``."""
        if flat.dim() != 2 or flat.shape[1] < graph.num_params:
            raise ValueError(f"expected flat parameters [B, >= {graph.num_params}], got {tuple(flat.shape)}")
        x, edge_attr = torch.func.vmap(graph.features)(flat[:, :graph.num_params])
        return cls(x, edge_attr, dense_layout(graph).to(flat.device))

    @property
    def num_graphs(self) -> int:
        return self.x.shape[0]

    @property
    def num_nodes(self) -> int:
        """Nodes of the whole batch, as on a PyG ``Batch``."""
        return self.num_graphs * self.layout.num_nodes

    @property
    def num_edges(self) -> int:
        """Edges of the whole batch, as on a PyG ``Batch``."""
        return self.num_graphs * self.layout.num_edges

    def to(self, device: torch.device | str) -> DenseGraphs:
        return DenseGraphs(self.x.to(device), self.edge_attr.to(device), self.layout.to(device))
