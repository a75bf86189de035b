"""Layer templates: how each kind of layer becomes nodes, edges and parameter placements.

Both tracers (:mod:`encoders.tracing` with ``torch.fx``, :mod:`encoders.exporting` with
``torch.export``) find layers and call these templates, so a layer gets the same graph whichever
tracer found it. Values are node-id tensors: ``ids[k]`` is the neuron that carries feature ``k``.

Conventions (see ``docs/neural_graphs.md`` for pictures):

* **Dense layers** (linear, convolution, embedding) get a block of new neurons and one edge per
  (input neuron, output neuron) pair. An input neuron that feeds several input features (a
  convolution map flattened over ``S`` positions, or a key/value head shared by several query
  heads) gets one edge per output neuron carrying all its weights in ``S`` slots.
* **Normalization** (``gamma``, ``beta``) is a block of new neurons joined one-to-one, ``gamma``
  on those edges, ``beta`` on the nodes; the two blocks are permuted together.
* **Residual additions** join the older block to the newer one by identity edges and tie their
  permutations; **gates** (``silu(gate) * up`` in a Llama MLP) likewise, with gate edges.
* **Attention** keeps the network's own Q, K and V neurons (the outputs of its projections) and
  splits each into heads: neurons permute only within their head, Q/K heads together and V heads
  separately, as ``softmax(q k^T) v`` allows. Each key neuron is joined to the query neuron(s) it
  is multiplied with by an attention edge (several query heads share a key head under grouped-
  query attention). The output projection reads the value neurons. Heads stay distinguishable
  (``node_head``); the graph does not claim the permutation of whole heads.
* **Tied weights**: an embedding table used again (an encoder-decoder's shared embedding) gives
  the same neurons; a linear head that reuses it (a tied LM head) outputs onto the token nodes
  and ties its inputs to the embedding neurons. Each parameter element still lives in one place.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from encoders.builder import EdgeKind, GraphBuilder, Role, named_tensors

__all__ = ["Layers"]


def _occurrences(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For ``ids [K]``: the distinct ids ``[C]`` (sorted), each entry's index among them ``[K]``
    and how many equal entries precede it ``[K]``."""
    channels, inverse = ids.unique(return_inverse=True)
    order = torch.sort(inverse, stable=True).indices
    first = torch.zeros(len(channels), dtype=torch.long)
    counts = torch.bincount(inverse, minlength=len(channels))
    first[1:] = counts.cumsum(0)[:-1]
    occurrence = torch.empty_like(ids)
    occurrence[order] = torch.arange(len(ids)) - first[inverse[order]]
    return channels, inverse, occurrence


class Layers:
    """Layer templates over one :class:`GraphBuilder` for the parameters of ``model``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.b = GraphBuilder()
        self.placed: set[str] = set()
        self._next_channel: dict[int, int] = {}  # block -> next free node-feature channel
        self._embeddings: dict[str, tuple[Tensor, Tensor]] = {}  # weight -> (token nodes, neurons)

    # ------------------------------------------------------------------ helpers
    def place(self, name: str, **kw) -> None:
        if name in self.placed:
            raise ValueError(f"parameter {name!r} is used by two layers; weight sharing is only supported for "
                             "embedding tables (and output heads tied to them)")
        self.b.place(name, self.model.get_parameter(name), **kw)
        self.placed.add(name)

    def inputs(self, width: int) -> Tensor:
        """``width`` new input neurons (the network's input features)."""
        return self.b.add_block(width, Role.INPUT, depth=0)

    def new_layer(self, src: Tensor, width: int) -> Tensor:
        return self.b.add_block(width, Role.HIDDEN, depth=self.b.depth_of(src) + 1)

    def node_param(self, name: str, nodes: Tensor) -> None:
        """A parameter with one value per neuron of ``nodes`` (a bias, ``beta``, a class token) on
        the next free node-feature channel of their block."""
        block = self.b.block_of(nodes)
        channel = self._next_channel.get(block, 0)
        self.place(name, on_edge=False, entity=nodes, channel=channel)
        self._next_channel[block] = channel + 1

    def added(self, name: str, neurons: Tensor, axis: int = -1) -> Tensor:
        """``x + p`` where ``p``'s ``axis`` runs over the neurons ``neurons [n]`` of ``x``; returns the
        neurons that carry the sum.

        If only that axis varies, ``p`` is a per-neuron parameter (a bias) on ``neurons``. If other
        axes vary too, it is a table of per-position feature vectors (a learned position
        embedding, :meth:`embedding`), whose neurons join ``x`` as a residual.
        """
        shape = self.model.get_parameter(name).shape
        axis %= len(shape)
        if shape[axis] != len(neurons):
            raise ValueError(f"{name} of shape {tuple(shape)} is added to {len(neurons)} neurons along axis {axis}")
        if all(size == 1 for a, size in enumerate(shape) if a != axis):
            self.node_param(name, neurons.view(shape))
            return neurons
        return self.residual(neurons, self.embedding(name, axis=axis))

    def activation(self, nodes: Tensor, name: str) -> None:
        self.b.set_activation(nodes, name)

    def finish(self) -> tuple[GraphBuilder, list[tuple[str, Tensor]]]:
        """Give every parameter no template claimed (e.g. a standalone scale) its own component of
        isolated nodes; returns the builder and ``model.named_parameters()``."""
        named = named_tensors(self.model.named_parameters())
        for name, tensor in named:
            if name not in self.placed:
                ids = self.b.add_block(tensor.numel(), Role.OTHER, depth=0)
                self.b.place(name, tensor, on_edge=False, entity=ids.reshape(tensor.shape))
        return self.b, named

    # ------------------------------------------------------------------ layers
    def dense(self, weight: str, src: Tensor, out_features: int, *, bias: str | None = None,
              transposed: bool = False) -> Tensor:
        """A linear layer ``y = W x (+ b)`` reading neurons ``src [in]``; returns ``[out]`` new ids.

        ``W`` is ``[out, in]`` (``[in, out]`` if ``transposed``, as in GPT-2's ``Conv1D``).
        """
        dst = self.new_layer(src, out_features)
        channels, inverse, occurrence = _occurrences(src)
        if len(channels) == len(src):
            eid = self.b.dense_edges(src, dst)
            entity, position, layout = eid, None, ("none", ())
        else:  # an input neuron feeds several features: one edge, its weights in slots
            eid = self.b.dense_edges(channels, dst)
            entity = eid[:, inverse]
            position = occurrence.expand(entity.shape)
            layout = ("spatial", (int(occurrence.max()) + 1,))
        if transposed:
            entity = entity.t()
            position = None if position is None else position.t()
        self.place(weight, on_edge=True, entity=entity, layout=layout, position=position)
        if bias is not None:
            self.node_param(bias, dst)
        return dst

    def conv(self, weight: str, src: Tensor, *, bias: str | None = None, groups: int = 1) -> Tensor:
        """A convolution ``[out, in / groups, *kernel]``; the kernel fills the edge's slots.

        ``groups=1``: every input channel to every output channel. A depthwise convolution
        (``groups`` = input channels = output channels) joins each channel to its own output
        channel one-to-one, and the two are permuted together, as a normalization's are. Other
        group counts raise ``ValueError``.
        """
        w = self.model.get_parameter(weight)
        kernel = tuple(w.shape[2:])
        if groups != 1:
            if not groups == len(src) == w.shape[0] or w.shape[1] != 1:
                raise ValueError(f"{weight}: grouped convolutions (groups={groups}) are supported only depthwise "
                                 "(groups = input channels = output channels)")
            dst = self.new_layer(src, len(src))
            eid = self.b.identity_edges(src, dst, EdgeKind.WEIGHT)
            entity = eid.reshape((-1, 1) + (1,) * len(kernel))
            self.place(weight, on_edge=True, entity=entity, layout=("kernel", kernel))
            if bias is not None:
                self.node_param(bias, dst)
            return dst
        if w.shape[1] != len(src):
            raise ValueError(f"{weight} expects {w.shape[1]} input channels but receives {len(src)} neurons")
        dst = self.new_layer(src, w.shape[0])
        eid = self.b.dense_edges(src, dst)
        self.place(weight, on_edge=True, entity=eid.reshape(eid.shape + (1,) * len(kernel)), layout=("kernel", kernel))
        if bias is not None:
            self.node_param(bias, dst)
        return dst

    def embedding(self, weight: str, axis: int = -1) -> Tensor:
        """A table of feature vectors (token embeddings ``[tokens, dim]``, or learned positions such
        as ViT's ``[1, positions, dim]`` with the features along ``axis``): one input node per row,
        ``dim`` new neurons, the table's values on the edges between them.

        A table used again gives the same neurons (it computes the same function of the tokens).
        """
        if weight not in self._embeddings:
            w = self.model.get_parameter(weight)
            axis %= w.dim()
            dim = w.shape[axis]
            ids = self.inputs(w.numel() // dim)
            dst = self.new_layer(ids, dim)
            eid = self.b.dense_edges(ids, dst)  # [dim, rows]
            rows = [s for a, s in enumerate(w.shape) if a != axis]
            self.place(weight, on_edge=True, entity=eid.t().reshape(*rows, dim).movedim(-1, axis))
            self._embeddings[weight] = (ids, dst)
        return self._embeddings[weight][1]

    def tied_head(self, weight: str, src: Tensor) -> Tensor:
        """A linear head whose weight is the embedding table ``weight``: its outputs are the token
        nodes, and its inputs must be permuted with the embedding neurons."""
        tokens, neurons = self._embeddings[weight]
        if len(src) != len(neurons):
            raise ValueError(f"the output head tied to {weight} reads {len(src)} features, not {len(neurons)}")
        if self.b.block_of(src) != self.b.block_of(neurons):
            self.b.tie(src, neurons)
        return tokens

    def is_embedding(self, weight: str) -> bool:
        return weight in self._embeddings

    def norm(self, src: Tensor, weight: str | None, bias: str | None = None) -> Tensor:
        """An affine normalization over the neurons ``src``: ``gamma`` on one-to-one edges into new
        neurons, ``beta`` on them. Without ``gamma`` (and ``beta``) values pass through."""
        if weight is None:
            if bias is not None:
                self.node_param(bias, src)
            return src
        if self.model.get_parameter(weight).shape != src.shape:
            raise ValueError(f"{weight} has shape {tuple(self.model.get_parameter(weight).shape)}; only a 1-D "
                             f"(feature/channel) normalization over the {len(src)} neurons it reads is supported")
        dst = self.b.add_block(len(src), Role.NORM, depth=self.b.depth_of(src) + 1)
        eid = self.b.identity_edges(src, dst, EdgeKind.NORM)
        self.place(weight, on_edge=True, entity=eid)
        if bias is not None:
            self.node_param(bias, dst)
        return dst

    def residual(self, a: Tensor, b: Tensor) -> Tensor:
        """``a + b``: identity edges from the older block into the newer one, which carries the sum."""
        return self._join(a, b, EdgeKind.RESIDUAL)

    def gate(self, a: Tensor, b: Tensor) -> Tensor:
        """``a * b`` of two layers' neurons (a GLU): gate edges from the older block into the newer."""
        return self._join(a, b, EdgeKind.GATE)

    def _join(self, a: Tensor, b: Tensor, kind: EdgeKind) -> Tensor:
        if len(a) != len(b):
            raise ValueError(f"cannot join {len(a)} neurons with {len(b)} one-to-one")
        if torch.equal(a, b):
            return a
        old, new = (a, b) if int(a.min()) < int(b.min()) else (b, a)
        self.b.identity_edges(old, new, kind)
        return new

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``softmax(q k^T) v`` per head; ``q [H, d]``, ``k [Hk, d]``, ``v [Hk, dv]`` node ids, where
        ``Hk`` divides ``H`` (``Hk < H``: grouped-query attention). Returns the ``[H * dv]`` value
        neurons that the output features carry (a value head repeats for each query head using it).
        """
        heads = q.shape[0]
        k_rows, k_of = self._kv_heads(k, heads, "key")
        v_rows, v_of = self._kv_heads(v, heads, "value")
        for rows in (q, k_rows, v_rows):
            self.b.split_heads(rows)
        for h in range(heads):
            self.b.identity_edges(k_rows[k_of[h]], q[h], EdgeKind.ATTENTION)
        return v_rows[v_of].reshape(-1)

    @staticmethod
    def _kv_heads(x: Tensor, heads: int, what: str) -> tuple[Tensor, Tensor]:
        """``x [Hk, d]`` and which of its rows each of the ``heads`` query heads uses: query head
        ``h`` uses ``h // (heads / Hk)``, as grouped-query attention repeats key/value heads."""
        if heads % x.shape[0]:
            raise ValueError(f"attention with {heads} query heads and {x.shape[0]} {what} heads is not supported")
        return x, torch.arange(heads) // (heads // x.shape[0])
