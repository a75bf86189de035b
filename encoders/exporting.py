"""Neural graphs of modules that ``torch.fx`` cannot trace, read from ``torch.export``'s ATen graph.

Hugging Face models (GPT-2, BERT, Llama, ViT, T5, ...) and other modules with data-dependent
Python do not trace symbolically. ``torch.export`` runs them on example inputs (fake tensors: no
real computation) and records every ATen operation with its shapes. This module walks that
record and describes each layer through the same :class:`~encoders.templates.Layers` templates
the fx tracer uses.

Each traced value is abstract: an activation's *neuron ids* (a small tensor over the dimensions
that index neurons, e.g. ``[heads, head_dim]`` for a query tensor ``[B, heads, T, head_dim]``),
a parameter, attention scores, a fresh model input, or nothing (masks, positions, constants).
Reshapes, transposes, slices, splits and concatenations move the ids like the data, so heads,
rotary embeddings (a half-rotation of each head), grouped-query repeats and flattened
convolution maps need no special cases. What is recognised:

* ``linear``/``addmm``/``mm``/``matmul`` with a parameter (``[in, out]`` weights of GPT-2's
  ``Conv1D`` too), convolutions, ``embedding`` (and positional tables added to activations);
* ``layer_norm``, ``rms_norm``, ``group_norm``, batch and instance norms, and a hand-written
  norm's ``weight * x`` (with ``+ bias``), e.g. Llama's and T5's RMSNorm;
* ``scaled_dot_product_attention`` and hand-written ``softmax(q k^T) v`` (``matmul``/``bmm``);
* residual additions, GLU gates (``silu(gate) * up``), activation functions;
* a tied output head (``lm_head`` sharing the token embedding) and embeddings used twice.

Where a layer mixes the neurons of one block by position (rotary embeddings mix each query/key
head's two halves), those neurons are fixed: no symmetry moves them. An operation on activations
that is none of the above raises ``ValueError`` naming the operation and the module it ran in.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from encoders.builder import GraphBuilder
from encoders.templates import Layers

__all__ = ["example_inputs_for", "is_hugging_face", "trace_exported"]


@dataclass
class _Act:
    """An activation: ``ids`` holds the neuron of every index along ``dims`` (ascending tensor dims)."""

    ids: Tensor
    dims: tuple[int, ...]

    def vector(self, dim: int, where: str) -> Tensor:
        """The neurons along tensor dim ``dim``, which must be this value's only neuron dim."""
        if self.dims != (dim,):
            raise ValueError(f"{where} reads features along dim {dim}, but the value's neurons are indexed by dims "
                             f"{self.dims}")
        return self.ids


@dataclass
class _Param:
    name: str
    transposed: bool = False  # ``W.t()`` of a 2-D parameter


@dataclass
class _Scores:
    """Attention scores ``q k^T`` (before or after softmax), per query head."""

    q: Tensor  # [H, d] query neurons
    k: Tensor  # [Hk, d] key neurons
    rows: Tensor  # [R] which query head each score row holds (batch-and-head merged layouts repeat heads)
    dims: tuple[int, ...]  # the query's neuron dims: (head, feature) or (feature,); the output's too


class _Fresh:
    """A model input: its features get input neurons when a layer first reads them."""


_FRESH = _Fresh()

_ACTIVATIONS = {
    "relu": "relu", "gelu": "gelu", "silu": "silu", "tanh": "tanh",
    "sigmoid": "sigmoid", "leaky_relu": "leaky_relu", "sin": "sine", "softplus": "softplus", "elu": "elu",
    "hardtanh": "other", "hardswish": "other", "mish": "other", "selu": "other", "celu": "other",
    "hardsigmoid": "other", "log_sigmoid": "other",
}
_PASSTHROUGH = {
    "clone", "contiguous", "alias", "detach", "to", "_to_copy", "type_as", "lift_fresh_copy", "dropout",
    "feature_dropout", "alpha_dropout", "neg", "pow", "abs", "exp", "log", "sqrt", "rsqrt", "square",
    "reciprocal", "clamp", "clamp_min", "clamp_max", "erf", "cos", "max_pool1d", "max_pool2d", "max_pool3d",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "upsample_nearest2d", "upsample_bilinear2d", "masked_fill",
    "where", "expand", "expand_as", "float", "half", "bfloat16", "sign",
}
_RESHAPES = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "unsqueeze", "squeeze", "view_as",
             "reshape_as"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "var", "std", "norm", "linalg_vector_norm", "logsumexp", "max", "min"}
_IGNORED = {"_assert_tensor_metadata", "sym_size", "sym_numel", "sym_stride", "_assert_scalar", "scalar_tensor"}


def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return tuple(int(s) for s in val.shape) if isinstance(val, Tensor) else None


def _chunks(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Group the dims of a reshape ``src -> dst`` into pieces with equal products."""
    out, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        ci, cj = [], []
        pi = pj = 1
        if i < len(src):
            pi, i = src[i], i + 1
            ci.append(i - 1)
        if j < len(dst):
            pj, j = dst[j], j + 1
            cj.append(j - 1)
        while pi != pj:
            if pi < pj and i < len(src):
                pi, i = pi * src[i], i + 1
                ci.append(i - 1)
            elif j < len(dst):
                pj, j = pj * dst[j], j + 1
                cj.append(j - 1)
            else:
                raise ValueError(f"cannot follow a reshape from {src} to {dst}")
        out.append((ci, cj))
    return out


def _normalize(act: _Act) -> _Act:
    """Drop dims along which the ids do not change (batch or position copies of the same neurons)."""
    ids, dims = act.ids, list(act.dims)
    for axis in reversed(range(len(dims))):
        if ids.shape[axis] > 1 and bool((ids == ids.narrow(axis, 0, 1)).all()):
            ids = ids.select(axis, 0)
            del dims[axis]
    return _Act(ids, tuple(dims))


def _reshape(act: _Act, src: tuple[int, ...], dst: tuple[int, ...]) -> _Act:
    bearing = [c for c in _chunks(src, dst) if any(d in act.dims for d in c[0])]
    in_dims = [d for c in bearing for d in c[0]]
    full = act.ids
    for pos, d in enumerate(in_dims):
        if d not in act.dims:
            full = full.unsqueeze(pos)
    full = full.expand([src[d] for d in in_dims])
    out_dims = [j for c in bearing for j in c[1]]
    return _normalize(_Act(full.reshape([dst[j] for j in out_dims]), tuple(out_dims)))


def _permute(act: _Act, perm: list[int]) -> _Act:
    new = [perm.index(d) for d in act.dims]
    order = sorted(range(len(new)), key=new.__getitem__)
    return _Act(act.ids.permute(order), tuple(sorted(new)))


def _broadcast(act: _Act, ndim_in: int, shape_out: tuple[int, ...]) -> _Act:
    """The value after broadcasting to ``shape_out`` (new leading dims shift its dims)."""
    shift = len(shape_out) - ndim_in
    dims = tuple(d + shift for d in act.dims)
    ids = act.ids.expand([shape_out[d] for d in dims])
    return _normalize(_Act(ids, dims)) if ids.shape != act.ids.shape else _Act(ids, dims)


def _select(act: _Act, dim: int, index: int) -> _Act:
    """The value after ``x.select(dim, index)``: a neuron dim picks one neuron, others drop out."""
    ids, dims = act.ids, list(act.dims)
    if dim in dims:
        ids = ids.select(dims.index(dim), index)
        dims.remove(dim)
    return _Act(ids, tuple(d - (d > dim) for d in dims))


def _unique_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct rows of ``x [R, d]`` in order of first appearance, and each row's index among them."""
    seen: dict[tuple[int, ...], int] = {}
    index = [seen.setdefault(tuple(row), len(seen)) for row in x.tolist()]
    firsts: dict[int, int] = {}
    for position, k in enumerate(index):
        firsts.setdefault(k, position)
    return x[list(firsts.values())], torch.tensor(index)


class _ExportWalker:
    """Walks an exported program and describes every layer through :class:`Layers`."""

    def __init__(self, model: nn.Module, program: torch.export.ExportedProgram, outputs: str) -> None:
        self.model = model
        self.program = program
        self.layers = Layers(model)
        self.b = self.layers.b
        self.outputs = outputs
        names = {id(p): n for n, p in model.named_parameters()}
        self.params = {
            spec.arg.name: names[id(model.get_parameter(spec.target))]
            for spec in program.graph_signature.input_specs
            if spec.kind == torch.export.graph_signature.InputKind.PARAMETER
        }
        self.user_inputs = set(program.graph_signature.user_inputs)

    # ------------------------------------------------------------------ helpers
    def where(self, node: Any) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        module = list(stack.values())[-1] if stack else None
        if not module:
            return f"{node.target} in the model"
        kind = str(module[1]).rsplit(".", 1)[-1].strip("'>")
        return f"{node.target} in module {module[0]!r} ({kind})" if module[0] else f"{node.target} in {kind}.forward"

    def read(self, value: object, width: int, dim: int, where: str) -> Tensor:
        """The neurons a layer reads along ``dim``; a fresh input gets ``width`` input neurons."""
        if isinstance(value, _Fresh):
            return self.layers.inputs(width)
        if not isinstance(value, _Act):
            raise ValueError(f"{where} reads a value that carries no neurons (a constant or buffer)")
        ids = value.vector(dim, where)
        if len(ids) != width:
            raise ValueError(f"{where} expects {width} input features but receives {len(ids)} neurons")
        return ids

    def param(self, value: object, where: str) -> _Param:
        if not isinstance(value, _Param):
            raise ValueError(f"{where} uses a weight that is not a parameter of the model")
        return value

    # ------------------------------------------------------------------ layers
    def linear(self, x: object, w: _Param, bias: object, node: Any, weight_in_out: bool) -> _Act:
        where = self.where(node)
        weight = self.model.get_parameter(w.name)
        if weight.dim() != 2:
            raise ValueError(f"{where}: a {weight.dim()}-D weight in a matrix product is not supported")
        in_out = weight_in_out != w.transposed  # stored as [in, out]
        width_in, width_out = (weight.shape[0], weight.shape[1]) if in_out else (weight.shape[1], weight.shape[0])
        out_shape = _shape(node)
        ndim_in = len(out_shape)
        if self.layers.is_embedding(w.name) and not in_out:
            src = self.read(x, width_in, ndim_in - 1, where)
            return _Act(self.layers.tied_head(w.name, src), (ndim_in - 1,))
        src = self.read(x, width_in, ndim_in - 1, where)
        bias_name = self.param(bias, where).name if bias is not None else None
        return _Act(self.layers.dense(w.name, src, width_out, bias=bias_name, transposed=in_out), (ndim_in - 1,))

    def attention(self, q: _Act, k: _Act, v: _Act, mask: object, where: str) -> _Act:
        if isinstance(mask, _Act):  # per-head score biases (T5's relative positions) index heads, not neurons
            self.b.fix(mask.ids)
        return self.weighted(self.scores(q, k, where), v, where)

    def scores(self, q: _Act, k: _Act, where: str) -> _Scores:
        """``q k^T``. Rows repeat where heads were merged with the batch or repeated for grouped-
        query attention; the distinct rows, in order, are the heads."""
        q_rows, rows = _unique_rows(self.heads(q, where))
        return _Scores(q_rows, _unique_rows(self.heads(k, where))[0], rows, q.dims)

    def weighted(self, scores: _Scores, v: _Act, where: str) -> _Act:
        """``softmax(scores) v``: the value neurons, laid out like ``v`` for every query head."""
        v_rows = _unique_rows(self.heads(v, where))[0]
        out = self.layers.attention(scores.q, scores.k, v_rows).view(scores.q.shape[0], -1)[scores.rows]
        return _Act(out if len(scores.dims) == 2 else out.reshape(-1), scores.dims)

    @staticmethod
    def heads(x: _Act, where: str) -> Tensor:
        """``[heads, head_dim]`` neurons of a query/key/value tensor ``[..., heads?, T, head_dim]``."""
        if len(x.dims) == 1:
            return x.ids.unsqueeze(0)
        if len(x.dims) == 2:
            return x.ids
        raise ValueError(f"{where}: attention on a value whose neurons span dims {x.dims} is not supported")

    # ------------------------------------------------------------------ dispatch
    def visit(self, node: Any, args: list, kwargs: dict) -> object:
        target = node.target
        if target is operator.getitem:
            return args[0][args[1]] if isinstance(args[0], (tuple, list)) else None
        name = getattr(getattr(target, "overloadpacket", None), "__name__", getattr(target, "__name__", str(target)))
        if name.endswith("_") and not name.startswith("_"):
            name = name[:-1]  # an in-place variant (relu_, add_, dropout_) reads like the op
        values = [a for a in (*args, *kwargs.values()) if isinstance(a, (_Act, _Param, _Scores, _Fresh))]
        nested = [v for a in args if isinstance(a, (list, tuple)) for v in a if isinstance(v, (_Act, _Fresh))]
        if name in _IGNORED or not (values or nested):
            return None
        handler = getattr(self, f"op_{name}", None)
        if handler is not None:
            return handler(node, args, kwargs)
        acts = [v for v in values if isinstance(v, (_Act, _Scores))]
        if not acts:
            if any(isinstance(v, _Fresh) for v in values):
                return _FRESH
            params = [v for v in values if isinstance(v, _Param)]
            keeps = name in _PASSTHROUGH or name in _RESHAPES
            return params[0] if keeps and len(params) == 1 else None  # e.g. a class token expanded
        if name in _ACTIVATIONS:
            if isinstance(args[0], _Act):
                self.layers.activation(args[0].ids.reshape(-1), _ACTIVATIONS[name])
            return self.same(node, args, args[0])
        if name in _PASSTHROUGH:
            first = next(a for a in (*args, *kwargs.values()) if isinstance(a, (_Act, _Scores)))
            return self.same(node, args, first)
        if name in _RESHAPES:
            return self.reshaped(node, args[0])
        if name in _REDUCTIONS:
            return self.reduced(node, args)
        raise ValueError(f"operation {name!r} ({self.where(node)}) on network activations is not supported by "
                         "neural graphs")

    def same(self, node: Any, args: list, value: object) -> object:
        """``value`` carried to the op's output shape (elementwise ops and their broadcasting)."""
        out = _shape(node)
        if not isinstance(value, _Act) or out is None:
            return value
        index = next(i for i, a in enumerate(args) if a is value)
        return _broadcast(value, len(_shape(node.args[index])), out)

    def reshaped(self, node: Any, x: object) -> object:
        if not isinstance(x, _Act):
            return x
        return _reshape(x, _shape(node.args[0]), _shape(node))

    def reduced(self, node: Any, args: list) -> object:
        x = args[0]
        if not isinstance(x, _Act):
            return x
        src, out = _shape(node.args[0]), _shape(node)
        dims = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple, int)) else node.kwargs.get("dim")
        if dims is None:
            return None
        dims = [d % len(src) for d in ([dims] if isinstance(dims, int) else dims)]
        if any(d in x.dims for d in dims):
            return None  # a statistic over neurons (a norm's mean square): no neurons of its own
        if len(out) != len(src):
            x = _Act(x.ids, tuple(d - sum(r < d for r in dims) for d in x.dims))
        return (x, None) if isinstance(node.meta.get("val"), (tuple, list)) else x

    # ------------------------------------------------------------------ ops with their own rules
    def op_linear(self, node, args, kwargs):
        x, w = args[0], args[1]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        return self.linear(x, self.param(w, self.where(node)), bias, node, weight_in_out=False)

    def op_addmm(self, node, args, kwargs):
        bias, x, w = args[0], args[1], args[2]
        if isinstance(x, _Param) and isinstance(w, (_Act, _Fresh)):
            raise ValueError(f"{self.where(node)}: a parameter times activations (W @ x) is not supported")
        return self.linear(x, self.param(w, self.where(node)), bias, node, weight_in_out=True)

    def op_mm(self, node, args, kwargs):
        return self.op_matmul(node, args, kwargs)

    def op_bmm(self, node, args, kwargs):
        return self.op_matmul(node, args, kwargs)

    def op_matmul(self, node, args, kwargs):
        a, b = args[0], args[1]
        where = self.where(node)
        if isinstance(b, _Param):
            return self.linear(a, b, None, node, weight_in_out=True)
        if isinstance(a, _Act) and isinstance(b, _Act):  # q @ k^T
            nd = len(_shape(node.args[0]))
            if a.dims[-1] != nd - 1 or nd - 2 not in b.dims or nd - 1 in b.dims:
                raise ValueError(f"{where}: a product of two activations that is not q @ k^T is not supported")
            return self.scores(a, _permute(b, [*range(nd - 2), nd - 1, nd - 2]), where)
        if isinstance(a, _Scores) and isinstance(b, _Act):
            return self.weighted(a, b, where)
        raise ValueError(f"{where}: this matrix product of activations is not supported")

    def op_scaled_dot_product_attention(self, node, args, kwargs):
        q, k, v = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        where = self.where(node)
        if not all(isinstance(t, _Act) for t in (q, k, v)):
            raise ValueError(f"{where}: attention whose query, key or value carries no neurons is not supported")
        return self.attention(q, k, v, mask, where)

    def op_softmax(self, node, args, kwargs):
        x = args[0]
        if isinstance(x, _Act):
            self.layers.activation(x.ids.reshape(-1), "other")
        return x

    op__softmax = op_softmax
    op_log_softmax = op_softmax
    op__log_softmax = op_softmax

    def op_embedding(self, node, args, kwargs):
        w = self.param(args[0], self.where(node))
        if isinstance(args[1], _Act):
            raise ValueError(f"{self.where(node)}: an embedding indexed by activations is not supported")
        return _Act(self.layers.embedding(w.name), (len(_shape(node)) - 1,))

    def conv(self, node, x, w, bias, transposed=False, groups=1):
        where = self.where(node)
        if transposed:
            raise ValueError(f"{where}: transposed convolutions are not supported")
        weight = self.param(w, where)
        src = self.read(x, self.model.get_parameter(weight.name).shape[1] * groups, 1, where)
        bias_name = self.param(bias, where).name if bias is not None else None
        try:
            return _Act(self.layers.conv(weight.name, src, bias=bias_name, groups=groups), (1,))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err

    def op_conv1d(self, node, args, kwargs):
        return self.conv(node, args[0], args[1], args[2] if len(args) > 2 else None,
                         groups=args[6] if len(args) > 6 else kwargs.get("groups", 1))

    op_conv2d = op_conv1d
    op_conv3d = op_conv1d

    def op_convolution(self, node, args, kwargs):
        return self.conv(node, args[0], args[1], args[2], transposed=bool(args[6]), groups=args[8])

    op__convolution = op_convolution

    def norm(self, node, x, weight, bias, dim):
        where = self.where(node)
        if not isinstance(x, _Act):
            return x
        w = self.param(weight, where).name if weight is not None else None
        b = self.param(bias, where).name if bias is not None else None
        ids = x.vector(dim, where)
        return _Act(self.layers.norm(ids, w, b), x.dims)

    def op_layer_norm(self, node, args, kwargs):
        if len(args[1]) != 1:
            raise ValueError(f"{self.where(node)}: layer norm over {len(args[1])} dims is not supported")
        return self.norm(node, args[0], args[2] if len(args) > 2 else None, args[3] if len(args) > 3 else None,
                         len(_shape(node)) - 1)

    def op_rms_norm(self, node, args, kwargs):
        if len(args[1]) != 1:
            raise ValueError(f"{self.where(node)}: RMS norm over {len(args[1])} dims is not supported")
        return self.norm(node, args[0], args[2] if len(args) > 2 else None, None, len(_shape(node)) - 1)

    def op_group_norm(self, node, args, kwargs):
        return self.norm(node, args[0], args[2] if len(args) > 2 else None, args[3] if len(args) > 3 else None, 1)

    def op_batch_norm(self, node, args, kwargs):
        return self.norm(node, args[0], args[1], args[2], 1)

    op_instance_norm = op_batch_norm

    def op__native_batch_norm_legit_no_training(self, node, args, kwargs):
        return (self.norm(node, args[0], args[1], args[2], 1), None, None)

    op__native_batch_norm_legit = op__native_batch_norm_legit_no_training
    op_native_batch_norm = op__native_batch_norm_legit_no_training
    op__native_batch_norm_legit_functional = op__native_batch_norm_legit_no_training

    def op_pad(self, node, args, kwargs):
        """Padding of spatial (trailing) dims passes values through; padding the neurons does not."""
        x, pad = args[0], args[1]
        if isinstance(x, _Act) and len(_shape(node)) - len(pad) // 2 <= max(x.dims):
            raise ValueError(f"{self.where(node)}: padding the neuron dimension is not supported")
        return x

    op_constant_pad_nd = op_pad
    op_reflection_pad2d = op_pad
    op_replication_pad2d = op_pad

    def op_native_dropout(self, node, args, kwargs):
        return (args[0], None)

    def op_max_pool2d_with_indices(self, node, args, kwargs):
        return (args[0], None)

    op_max_pool1d_with_indices = op_max_pool2d_with_indices
    op_max_pool3d_with_indices = op_max_pool2d_with_indices

    def op_t(self, node, args, kwargs):
        x = args[0]
        if isinstance(x, _Param):
            return _Param(x.name, not x.transposed)
        return self.op_transpose(node, [x, 0, 1], kwargs)

    def op_transpose(self, node, args, kwargs):
        x = args[0]
        src = _shape(node.args[0])
        a, b = args[1] % len(src), args[2] % len(src)
        if isinstance(x, _Param):
            return _Param(x.name, not x.transposed) if len(src) == 2 and a != b else x
        if not isinstance(x, _Act):
            return x
        perm = list(range(len(src)))
        perm[a], perm[b] = perm[b], perm[a]
        return _permute(x, perm)

    op_swapaxes = op_transpose

    def op_permute(self, node, args, kwargs):
        x = args[0]
        src = _shape(node.args[0])
        perm = [d % len(src) for d in args[1]]
        if isinstance(x, _Param):
            return _Param(x.name, not x.transposed) if perm == [1, 0] else x
        return _permute(x, perm) if isinstance(x, _Act) else x

    def op_select(self, node, args, kwargs):
        x, dim, index = args[0], args[1], args[2]
        return _select(x, dim % len(_shape(node.args[0])), index) if isinstance(x, _Act) else x

    def op_slice(self, node, args, kwargs):
        x = args[0]
        if not isinstance(x, _Act):
            return x
        src = _shape(node.args[0])
        dim = (args[1] if len(args) > 1 else 0) % len(src)
        if dim not in x.dims:
            return x
        start = args[2] if len(args) > 2 and args[2] is not None else 0
        end = args[3] if len(args) > 3 and args[3] is not None else src[dim]
        step = args[4] if len(args) > 4 else 1
        axis = x.dims.index(dim)
        index = torch.arange(src[dim])[slice(start, end, step)]
        return _Act(x.ids.index_select(axis, index), x.dims)

    def op_narrow(self, node, args, kwargs):
        return self.op_slice(node, [args[0], args[1], args[2], args[2] + args[3]], kwargs)

    def split(self, node, x, dim, sizes):
        if not isinstance(x, _Act):
            return tuple(x for _ in sizes)
        src = _shape(node.args[0])
        dim %= len(src)
        if dim not in x.dims:
            return tuple(x for _ in sizes)
        axis = x.dims.index(dim)
        return tuple(_Act(part, x.dims) for part in x.ids.split(list(sizes), dim=axis))

    def op_split(self, node, args, kwargs):
        sizes = [s[args[2] if len(args) > 2 else 0] for s in (tuple(v.shape) for v in node.meta["val"])]
        return self.split(node, args[0], args[2] if len(args) > 2 else 0, sizes)

    op_split_with_sizes = op_split
    op_chunk = op_split

    def op_unbind(self, node, args, kwargs):
        x, dim = args[0], (args[1] if len(args) > 1 else 0) % len(_shape(node.args[0]))
        parts = self.split(node, x, dim, [1] * _shape(node.args[0])[dim])
        return tuple(_select(p, dim, 0) if isinstance(p, _Act) else p for p in parts)

    def op_cat(self, node, args, kwargs):
        parts = list(args[0])
        nd = len(_shape(node))
        dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % nd
        acts = [p for p in parts if isinstance(p, _Act)]
        if not acts:
            return _FRESH if any(isinstance(p, _Fresh) for p in parts) else None
        where = self.where(node)
        if any(dim in a.dims for a in acts):  # concatenating features
            if len(acts) != len(parts) or any(a.dims != acts[0].dims for a in acts):
                raise ValueError(f"{where}: concatenating features of values without neurons is not supported")
            axis = acts[0].dims.index(dim)
            return _Act(torch.cat([a.ids for a in acts], axis), acts[0].dims)
        # concatenating positions (tokens, a class token): every part is in one feature space
        out = acts[0]
        for a in acts[1:]:
            out = _Act(self.layers.residual(out.vector(out.dims[0], where), a.vector(out.dims[0], where)), out.dims)
        for p in parts:
            if isinstance(p, _Param):  # e.g. a class token: one value per neuron
                self.layers.node_param(p.name, out.vector(out.dims[0], where).view(self._feature_shape(p.name)))
        return out

    def _feature_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.model.get_parameter(name).shape)

    def op_add(self, node, args, kwargs):
        return self.combine(node, args, "add")

    op_sub = op_add
    op_rsub = op_add

    def op_mul(self, node, args, kwargs):
        return self.combine(node, args, "mul")

    def op_div(self, node, args, kwargs):
        return self.combine(node, args, "div")

    def combine(self, node, args, op):
        where = self.where(node)
        a, b = args[0], args[1] if len(args) > 1 else None
        values = [v for v in (a, b) if isinstance(v, (_Act, _Param, _Scores, _Fresh))]
        if any(isinstance(v, _Scores) for v in values):
            other = next((v for v in values if isinstance(v, _Act)), None)
            if other is not None:
                self.b.fix(other.ids)  # a per-head score bias
            return next(v for v in values if isinstance(v, _Scores))
        acts = [v for v in values if isinstance(v, _Act)]
        params = [v for v in values if isinstance(v, _Param)]
        if not acts:
            if any(isinstance(v, _Fresh) for v in values):
                return _FRESH
            return params[0] if len(params) == 1 else None  # e.g. (1 + w) of a norm's weight
        out_shape = _shape(node)
        acts = [self.same(node, args, v) for v in (a, b) if isinstance(v, _Act)]
        if len(acts) == 2:
            x, y = acts
            if x.dims != y.dims:
                raise ValueError(f"{where}: combining activations indexed by different dims is not supported")
            if torch.equal(x.ids, y.ids):
                return x
            shared = torch.isin(x.ids.reshape(-1), y.ids.reshape(-1))
            if shared.all() and x.ids.numel() == y.ids.numel():  # one block mixed with itself by position
                self.b.fix(x.ids)
                return x
            if shared.any():
                raise ValueError(f"{where}: combining activations that share some neurons is not supported")
            if op == "div":
                raise ValueError(f"{where}: dividing activations by activations is not supported")
            join = self.layers.residual if op == "add" else self.layers.gate
            if len(x.dims) != 1:
                raise ValueError(f"{where}: joining activations indexed by several dims is not supported")
            return _Act(join(x.ids, y.ids), x.dims)
        x = acts[0]
        if not params:
            return x
        p = params[0]
        shape = self._feature_shape(p.name)
        if p.transposed or len(shape) == 0 or op == "div":
            return x  # a scalar scale (or anything else) stays unplaced: its own component
        return self.with_param(node, x, p, out_shape, op, where)

    def with_param(self, node, x: _Act, p: _Param, out_shape, op, where) -> _Act:
        """``x * w`` or ``x + w`` with a parameter ``w`` broadcast over the activations."""
        shape = self._feature_shape(p.name)
        padded = (1,) * (len(out_shape) - len(shape)) + shape
        own = [d for d, s in enumerate(padded) if s > 1]  # output dims the parameter varies along
        if len(x.dims) != 1:
            raise ValueError(f"{where}: parameter {p.name} applied to activations indexed by several dims is not "
                             "supported")
        if op == "mul" and own == list(x.dims):  # a per-neuron scale: a normalization's gamma
            return _Act(self.layers.norm(x.ids, p.name), x.dims)
        if op == "add" and x.dims[0] in own:  # a bias, or a table of learned positions
            return _Act(self.layers.added(p.name, x.ids, axis=x.dims[0] - (len(padded) - len(shape))), x.dims)
        raise ValueError(f"{where}: parameter {p.name} of shape {shape} applied to activations is not supported")

    # ------------------------------------------------------------------ walk
    def run(self) -> tuple[GraphBuilder, list[tuple[str, Tensor]]]:
        env: dict[Any, object] = {}
        graph = self.program.graph
        out_values: list[object] = []
        for node in graph.nodes:
            if node.op == "placeholder":
                if node.name in self.params:
                    env[node] = _Param(self.params[node.name])
                else:
                    env[node] = _FRESH if node.name in self.user_inputs else None
            elif node.op == "call_function":
                args = [self.lookup(env, a) for a in node.args]
                kwargs = {k: self.lookup(env, v) for k, v in node.kwargs.items()}
                env[node] = self.visit(node, args, kwargs)
            elif node.op == "output":
                out_values = [self.lookup(env, a) for a in node.args[0]]
        user_outputs = out_values[-len(self.program.graph_signature.user_outputs):]
        if self.outputs == "first":
            user_outputs = user_outputs[:1]
        for value in user_outputs:
            if isinstance(value, _Act):
                self.b.mark_output(value.ids.reshape(-1))
        return self.layers.finish()

    @staticmethod
    def lookup(env, a):
        if isinstance(a, (list, tuple)):
            return type(a)(env.get(x, x) if hasattr(x, "op") else x for x in a)
        return env[a] if hasattr(a, "op") else a


def is_hugging_face(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face ``PreTrainedModel`` (it has a config, a main input and
    dummy inputs), which is exported with inputs built from its config."""
    return all(hasattr(model, a) for a in ("config", "main_input_name", "dummy_inputs"))


def example_inputs_for(model: nn.Module) -> dict[str, Any] | None:
    """Inputs to export a Hugging Face model with, built from its config (``None`` for others).

    Text models get their ``dummy_inputs`` (a few token ids); vision models a zero image of the
    configured size. Caches are turned off, since a cache object is not a tensor output.
    """
    if not is_hugging_face(model):
        return None
    first = next(model.parameters(), torch.zeros(()))
    config = model.config
    if model.main_input_name == "pixel_values":
        size = getattr(config, "image_size", 224)  # e.g. ResNet configs have no image size
        shape = (1, config.num_channels, *(size if isinstance(size, (tuple, list)) else (size, size)))
        inputs: dict[str, Any] = {"pixel_values": torch.zeros(shape, dtype=first.dtype, device=first.device)}
    else:
        inputs = {k: v.to(first.device) for k, v in model.dummy_inputs.items()}
    if getattr(config, "use_cache", None) is not None:
        inputs["use_cache"] = False
    return inputs


def trace_exported(
    model: nn.Module, example_inputs: tuple | dict | None = None
) -> tuple[GraphBuilder, list[tuple[str, Tensor]]]:
    """Export ``model`` on ``example_inputs`` (a tuple of positional arguments or a dict of keyword
    arguments; Hugging Face models build their own) and describe it to a :class:`GraphBuilder`.

    Returns the builder and ``model.named_parameters()``. For a Hugging Face model, the graph's
    output neurons are those of its first output (the logits); otherwise those of every output.
    """
    inputs = example_inputs if example_inputs is not None else example_inputs_for(model)
    if inputs is None:
        raise ValueError(f"torch.export needs example inputs to trace {type(model).__name__}; pass example_inputs=")
    args, kwargs = (tuple(inputs), {}) if isinstance(inputs, (tuple, list)) else ((), dict(inputs))
    try:
        program = torch.export.export(model, args, kwargs, strict=False)
    except Exception as err:  # export raises many types; name the model in one clear error
        raise ValueError(f"torch.export cannot trace {type(model).__name__}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from err
    outputs = "first" if is_hugging_face(model) else "all"
    return _ExportWalker(model, program, outputs).run()
