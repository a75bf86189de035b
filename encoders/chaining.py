"""Neural graphs from parameter shapes and order alone (``NeuralGraph.from_parameters``).

This is what an optimizer sees: a list of tensors. The rules:

* A tensor with ``ndim >= 2`` is a layer weight ``[out, in, *kernel]``. If ``in`` equals the width
  of the previous layer it chains onto it; if the previous layer was a convolution and ``in`` is a
  multiple ``C*S`` of its ``C`` channels, it is a linear layer after a flatten over ``S`` spatial
  positions; otherwise it starts a new component with ``in`` fresh input neurons.
* A 1-D tensor whose length equals the width of the current layer becomes the next node-feature
  channel of that layer (a bias; normalization ``gamma``/``beta`` after it take channels 1, 2).
* Anything else (scalars, unmatched vectors) becomes its own component of isolated nodes.

What shapes cannot tell, and this constructor therefore does not represent: activations (all
``"none"``), residual connections, normalization layers as separate neurons, attention structure
(``in_proj_weight [3d, d]`` reads as a linear layer ``d -> 3d``, and ``out_proj`` then starts a new
component), weight sharing, and whether two layers that merely have chaining shapes are really
consecutive. Use :meth:`NeuralGraph.from_module` when the module is available.
"""

from __future__ import annotations

import torch
from torch import Tensor

from encoders.builder import EdgeKind, GraphBuilder, Role

__all__ = ["chain_parameters"]


def chain_parameters(named: list[tuple[str, Tensor]]) -> GraphBuilder:
    """Describe ``named`` (``[(name, tensor)]`` in order) to a :class:`GraphBuilder` by shape chaining."""
    b = GraphBuilder()
    current: Tensor | None = None  # node ids of the current layer
    current_is_conv = False
    next_channel = 0

    def close() -> None:
        if current is not None:
            b.mark_output(current)

    for name, t in named:
        if t.dim() >= 2:
            out_f, in_f, kernel = t.shape[0], t.shape[1], tuple(t.shape[2:])
            spatial = 0
            if current is not None and in_f == len(current):
                src = current
            elif current is not None and current_is_conv and t.dim() == 2 and in_f % len(current) == 0:
                src, spatial = current, in_f // len(current)
            else:
                close()
                src = b.add_block(in_f, Role.INPUT, depth=0)
            dst = b.add_block(out_f, Role.HIDDEN, depth=b.depth_of(src) + 1)
            if spatial:
                eid = b.dense_edges(src, dst)  # [out, C]
                entity = eid.repeat_interleave(spatial, dim=1)
                position = torch.arange(spatial).repeat(len(src)).expand(t.shape)
                b.place(name, t, on_edge=True, entity=entity, layout=("spatial", (spatial,)), position=position)
            else:
                eid = b.dense_edges(src, dst, EdgeKind.WEIGHT)
                entity = eid.reshape(eid.shape + (1,) * len(kernel))
                layout = ("kernel", kernel) if kernel else ("none", ())
                b.place(name, t, on_edge=True, entity=entity, layout=layout)
            current, current_is_conv, next_channel = dst, bool(kernel), 0
        elif t.dim() == 1 and current is not None and len(t) == len(current):
            b.place(name, t, on_edge=False, entity=current, channel=next_channel)
            next_channel += 1
        else:
            ids = b.add_block(t.numel(), Role.OTHER, depth=0)
            b.place(name, t, on_edge=False, entity=ids.reshape(t.shape))
    close()
    return b
