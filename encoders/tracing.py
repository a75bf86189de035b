"""Neural graphs of ``nn.Module`` objects, discovered by ``torch.fx`` (``NeuralGraph.from_module``).

This module describes a module to a :class:`~encoders.builder.GraphBuilder` through the layer
templates of :mod:`encoders.templates`; it does not import :mod:`encoders.graph`
(:mod:`encoders.build` turns the builder into a ``NeuralGraph``). Modules that ``torch.fx``
cannot trace go to :mod:`encoders.exporting` (``torch.export``) instead.

``torch.fx`` traces the module with the layers below kept as leaves; each traced value is then the
set of neurons (nodes) that index its feature dimension, and each layer call adds a block of nodes
and its edges. Supported:

* ``nn.Linear``, ``nn.Conv1d/2d/3d`` (``groups=1`` or depthwise), ``nn.Embedding`` (one input node
  per token);
* residual additions ``a + b`` of two traced values (one-to-one identity edges), concatenation
  along the feature dimension, flatten/reshape of convolution maps (a following linear layer gets
  one edge per input channel carrying the flattened spatial positions), pooling, dropout, views;
  a parameter added to activations (a bias, or a table of learned positions);
* ``BatchNorm*``, ``LayerNorm`` (1-D normalized shape), ``GroupNorm``, ``InstanceNorm*`` with
  affine parameters: a block of new nodes joined one-to-one, ``gamma`` on the edges, ``beta`` on
  the nodes (without affine parameters they pass values through);
* ``nn.MultiheadAttention`` (self-attention, packed ``in_proj_weight``): its Q, K and V neurons
  split into heads (see :meth:`encoders.templates.Layers.attention`); ``out_proj`` as a linear
  layer;
* ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` (templates, since their fast paths
  cannot be traced), also as the module given;
* activations, as modules or functions (relu, gelu, silu, tanh, sigmoid, leaky_relu, sin, ...),
  recorded on the neurons they follow.

Parameters used by no supported layer (e.g. a standalone ``nn.Parameter`` scale) become their own
component of isolated nodes, so every parameter is covered exactly once. A module with parameters
of an unsupported type raises ``ValueError`` naming the module and its type. ``GroupNorm`` with
several groups limits the true channel symmetry to within-group permutations; the graph, like the
paper's, does not encode that restriction.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from encoders.builder import GraphBuilder
from encoders.templates import Layers

__all__ = ["trace_module"]

_ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.LeakyReLU: "leaky_relu", nn.Softplus: "softplus", nn.ELU: "elu", nn.ReLU6: "relu",
    nn.Mish: "other", nn.Hardswish: "other", nn.Hardtanh: "other", nn.Softsign: "other",
}
_ACTIVATION_FUNCTIONS: dict[object, str] = {
    F.relu: "relu", torch.relu: "relu", F.gelu: "gelu", F.silu: "silu", torch.tanh: "tanh",
    F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.leaky_relu: "leaky_relu",
    torch.sin: "sine", F.softplus: "softplus", F.elu: "elu", "relu": "relu", "sigmoid": "sigmoid",
    "tanh": "tanh", "sin": "sine",
}
_PASSTHROUGH_MODULES = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
# layers whose template applies when the module given is the layer itself
_TEMPLATE_ROOTS = (nn.Linear, nn.modules.conv._ConvNd, nn.MultiheadAttention, nn.TransformerEncoderLayer,
                   nn.TransformerEncoder)
_LEAVES = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.MultiheadAttention, nn.TransformerEncoderLayer,
           nn.TransformerEncoder, nn.Flatten, *_NORMS, *_PASSTHROUGH_MODULES, *_ACTIVATION_MODULES)
_ELEMENTWISE = {operator.mul, operator.truediv, operator.neg, torch.mul, torch.div, "mul", "div", "neg",
                "contiguous", "clone", "float", "to", "type_as", "squeeze", "unsqueeze", "permute",
                "transpose", torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze, F.dropout,
                F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
                F.adaptive_avg_pool2d, F.adaptive_max_pool2d, "mean", torch.mean, "amax", "sum", torch.sum}
_FLATTENS = {torch.flatten, "flatten", "view", "reshape", torch.reshape}
_SHAPE_QUERIES = {"size", "dim", "numel", getattr, torch.numel}
_ADDS = {operator.add, operator.iadd, operator.sub, torch.add, torch.sub, "add", "sub", "add_"}


@dataclass
class _Neurons:
    """A traced value: the nodes that index its feature (channel) dimension."""

    ids: Tensor | None  # None while an input's width is unknown
    is_map: bool = False  # a convolution feature map (spatial dims follow the channels)
    flattened: bool = False  # a convolution map flattened into features

    def like(self, **kw) -> _Neurons:
        return _Neurons(**{**self.__dict__, **kw})


@dataclass
class _Parameter:
    """A parameter read directly (``self.pos``, ``self.pos[:n]``), not through a layer."""

    name: str


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def _sub(name: str, attr: str) -> str:
    return f"{name}.{attr}" if name else attr


class _Walker:
    """Walks an fx graph and describes every layer call through the :class:`Layers` templates."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = Layers(model)
        self.b = self.layers.b
        self.modules = dict(model.named_modules())
        self.parameters = dict(model.named_parameters())
        self.called: set[str] = set()

    # ------------------------------------------------------------------ helpers
    def inputs(self, value: _Neurons, width: int, where: str) -> Tensor:
        """Node ids of ``value``, creating input neurons of ``width`` if it is a fresh input."""
        if value.ids is None:
            value.ids = self.layers.inputs(width)
        if len(value.ids) != width:
            raise ValueError(f"{where} expects {width} input features but receives {len(value.ids)} neurons")
        return value.ids

    @staticmethod
    def _optional(module: nn.Module, name: str, attr: str) -> str | None:
        return _sub(name, attr) if getattr(module, attr, None) is not None else None

    # ------------------------------------------------------------------ layers
    def linear(self, name: str, m: nn.Linear, x: _Neurons) -> _Neurons:
        where = f"{name} ({type(m).__name__})"
        if x.ids is not None and x.is_map and len(x.ids) != m.in_features:
            if m.in_features % len(x.ids):
                raise ValueError(f"{where} has {m.in_features} input features, not a multiple of the "
                                 f"{len(x.ids)} channels it follows")
            src = x.ids.repeat_interleave(m.in_features // len(x.ids))  # flattened: channel-major
        else:
            src = self.inputs(x, m.in_features, where)
        return _Neurons(self.layers.dense(_sub(name, "weight"), src, m.out_features,
                                          bias=self._optional(m, name, "bias")))

    def conv(self, name: str, m: nn.modules.conv._ConvNd, x: _Neurons) -> _Neurons:
        if m.transposed:
            raise ValueError(f"{name} ({type(m).__name__}): transposed convolutions are not supported")
        src = self.inputs(x, m.in_channels, f"{name} ({type(m).__name__})")
        return _Neurons(self.layers.conv(_sub(name, "weight"), src, bias=self._optional(m, name, "bias"),
                                         groups=m.groups), is_map=True)

    def embedding(self, name: str, m: nn.Embedding, x: _Neurons) -> _Neurons:
        if x.ids is not None:
            raise ValueError(f"{name} (Embedding) must read the model's token input directly")
        return _Neurons(self.layers.embedding(_sub(name, "weight")))

    def norm(self, name: str, m: nn.Module, x: _Neurons) -> _Neurons:
        weight = getattr(m, "weight", None)
        if weight is None:
            return x
        if weight.dim() != 1:
            raise ValueError(f"{name} ({type(m).__name__}) normalizes over shape {tuple(weight.shape)}; "
                             "only a 1-D (feature/channel) normalized shape is supported")
        src = self.inputs(x, weight.numel(), f"{name} ({type(m).__name__})")
        return x.like(ids=self.layers.norm(src, _sub(name, "weight"), self._optional(m, name, "bias")))

    def attention(self, name: str, m: nn.MultiheadAttention, x: _Neurons) -> _Neurons:
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            raise ValueError(f"{name} (MultiheadAttention): only packed self-attention without bias_k/bias_v/"
                             "add_zero_attn is supported")
        d, heads = m.embed_dim, m.num_heads
        src = self.inputs(x, d, f"{name} (MultiheadAttention)")
        qkv = self.layers.dense(_sub(name, "in_proj_weight"), src, 3 * d, bias=self._optional(m, name, "in_proj_bias"))
        q, k, v = qkv.view(3, heads, d // heads)
        out = _Neurons(self.layers.attention(q, k, v))
        return self.linear(_sub(name, "out_proj"), m.out_proj, out)

    def residual(self, a: _Neurons, b: _Neurons) -> _Neurons:
        if a.ids is None or b.ids is None:
            raise ValueError("a residual addition with the raw model input is not supported")
        ids = self.layers.residual(a.ids, b.ids)
        return a if ids is a.ids else b

    def transformer_layer(self, name: str, m: nn.TransformerEncoderLayer, x: _Neurons) -> _Neurons:
        act = m.activation if not isinstance(m.activation, nn.Module) else type(m.activation)
        act_name = _ACTIVATION_MODULES.get(act) or _ACTIVATION_FUNCTIONS.get(act, "other")

        def feed_forward(h: _Neurons) -> _Neurons:
            h = self.linear(_sub(name, "linear1"), m.linear1, h)
            self.b.set_activation(h.ids, act_name)
            return self.linear(_sub(name, "linear2"), m.linear2, h)

        def attn(h: _Neurons) -> _Neurons:
            return self.attention(_sub(name, "self_attn"), m.self_attn, h)

        norm1 = lambda h: self.norm(_sub(name, "norm1"), m.norm1, h)  # noqa: E731
        norm2 = lambda h: self.norm(_sub(name, "norm2"), m.norm2, h)  # noqa: E731
        if m.norm_first:
            x = self.residual(x, attn(norm1(x)))
            return self.residual(x, feed_forward(norm2(x)))
        x = norm1(self.residual(x, attn(x)))
        return norm2(self.residual(x, feed_forward(x)))

    def transformer_encoder(self, name: str, m: nn.TransformerEncoder, x: _Neurons) -> _Neurons:
        for i, layer in enumerate(m.layers):
            x = self.transformer_layer(_sub(name, f"layers.{i}"), layer, x)
        return x if m.norm is None else self.norm(_sub(name, "norm"), m.norm, x)

    # ------------------------------------------------------------------ walk
    def call_module(self, name: str, args: list) -> object:
        m = self.modules[name]
        x = args[0] if args else None
        if name in self.called and any(True for _ in m.parameters(recurse=False)):
            raise ValueError(f"module {name!r} ({type(m).__name__}) is called more than once; weight sharing "
                             "is not supported by from_module (use NeuralGraph.from_parameters)")
        self.called.add(name)
        if isinstance(m, _PASSTHROUGH_MODULES):
            return x
        if isinstance(m, tuple(_ACTIVATION_MODULES)):
            return self.activate(x, _ACTIVATION_MODULES[type(m)])
        if not isinstance(x, _Neurons):
            raise ValueError(f"module {name!r} ({type(m).__name__}) receives a value the tracer cannot follow")
        if isinstance(m, nn.Flatten):
            return x.like(flattened=x.is_map)
        layers = {nn.Linear: self.linear, nn.modules.conv._ConvNd: self.conv, nn.Embedding: self.embedding,
                  nn.MultiheadAttention: self.attention, nn.TransformerEncoderLayer: self.transformer_layer,
                  nn.TransformerEncoder: self.transformer_encoder}
        for cls, fn in layers.items():
            if isinstance(m, cls):
                out = fn(name, m, x)
                return (out, None) if isinstance(m, nn.MultiheadAttention) else out
        if isinstance(m, _NORMS):
            return self.norm(name, m, x)
        if any(True for _ in m.parameters()):
            raise ValueError(f"module {name!r} of type {type(m).__name__} is not supported by neural graphs")
        return x  # a parameter-free module without a template: values pass through

    def added_parameter(self, x: _Neurons, name: str) -> _Neurons:
        """``x + p`` with ``p``'s last axis over ``x``'s features (:meth:`Layers.added`); anything
        else stays unplaced (its own component)."""
        shape = self.model.get_parameter(name).shape
        if x.is_map or not shape or shape[-1] != len(x.ids):
            return x
        return x.like(ids=self.layers.added(name, x.ids))

    def activate(self, x: object, activation: str) -> object:
        if isinstance(x, _Neurons) and x.ids is not None:
            self.b.set_activation(x.ids, activation)
        return x

    def call_function(self, node: fx.Node, args: list) -> object:
        target = node.target
        neurons = [a for a in args if isinstance(a, _Neurons)]
        if target in _ACTIVATION_FUNCTIONS:
            return self.activate(args[0], _ACTIVATION_FUNCTIONS[target])
        if target is operator.getitem and isinstance(args[0], tuple):
            return args[0][args[1]]
        if target is operator.getitem and isinstance(args[0], _Parameter):
            return args[0]  # a slice of a table (positions up to the sequence length)
        params = [a for a in args if isinstance(a, _Parameter)]
        if target in _ADDS and len(neurons) == 1 and params and neurons[0].ids is not None:
            return self.added_parameter(neurons[0], params[0].name)
        if not neurons or target in _SHAPE_QUERIES:
            return None  # shapes, sizes, constants
        if target in _ADDS and len(neurons) == 2:
            return self.residual(*neurons)
        if target in _ADDS or target in _ELEMENTWISE:
            return neurons[0]
        if target in _FLATTENS:
            return neurons[0].like(flattened=neurons[0].is_map)
        if target in (torch.cat, torch.concat):
            parts = args[0]
            if not all(isinstance(p, _Neurons) and p.ids is not None for p in parts):
                raise ValueError("torch.cat of values the tracer cannot follow")
            return _Neurons(torch.cat([p.ids for p in parts]), is_map=parts[0].is_map)
        raise ValueError(f"operation {getattr(target, '__name__', target)!r} on network activations is not "
                         "supported by neural graphs")

    def run(self) -> tuple[GraphBuilder, list[tuple[str, Tensor]]]:
        outputs: list[_Neurons] = []
        if isinstance(self.model, _TEMPLATE_ROOTS):  # a bare layer: its template, without tracing
            outputs.append(self.call_module("", [_Neurons(None)]))
        else:
            try:
                graph = _Tracer().trace(self.model)
            except Exception as err:  # fx raises many types; name the model in one clear error
                raise ValueError(f"torch.fx cannot trace {type(self.model).__name__}: {err}") from err
            env: dict[fx.Node, object] = {}
            for node in graph.nodes:
                args = list(fx.node.map_arg(node.args, lambda n: env[n]))
                if node.op == "placeholder":
                    env[node] = _Neurons(None)
                elif node.op == "get_attr":
                    env[node] = _Parameter(node.target) if node.target in self.parameters else None
                elif node.op == "call_module":
                    env[node] = self.call_module(node.target, args)
                elif node.op in ("call_function", "call_method"):
                    env[node] = self.call_function(node, args)
                elif node.op == "output":
                    fx.node.map_aggregate(args[0], lambda v: outputs.append(v) if isinstance(v, _Neurons) else None)
        for out in outputs:
            if isinstance(out, tuple):
                out = out[0]
            if isinstance(out, _Neurons) and out.ids is not None:
                self.b.mark_output(out.ids)
        return self.layers.finish()


def trace_module(model: nn.Module) -> tuple[GraphBuilder, list[tuple[str, Tensor]]]:
    """Trace ``model`` into a :class:`GraphBuilder`; returns it and ``model.named_parameters()``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"from_module expects an nn.Module, got {type(model).__name__}")
    return _Walker(model).run()
