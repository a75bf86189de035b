"""The neural-graph update rule: optimizer statistics on the network's neural graph, a neuron-level
GNN for context, and a small per-element head.

Per step, with ``P`` parameter elements and ``N`` neurons:

1. statistics (:func:`l2o.features.update_stats`) and 9 cheap features per element
   (:func:`l2o.features.compact_features`), computed in row blocks;
2. every neuron pools the features of the weights that enter it, of the weights that leave it and
   of its own parameters (biases, norm shifts): three means, ``O(P * 9)`` scatter-adds;
3. a neuron-level GNN (:class:`~encoders.layers.neuron_pna.NeuronPNALayer`, exact PNA aggregates
   over the graph in ``O(N)``) turns them, with role/activation/depth embeddings and the time
   features, into a context vector per neuron;
4. each element gets ``ctx = U[source] + V[target] + kind embedding`` (for a bias, source = target =
   its neuron) and a per-element head ``9 -> head_hidden -> 2`` outputs direction ``d`` and
   magnitude ``m``: ``update = step_mult * (skip + d) * adam * exp(exp_mult * m)`` (``gated``, the
   default: ``d`` rescales or flips Adam's direction, so an element whose gradients have been zero
   never moves), or Metz et al.'s ``step_mult * (d + skip * adam) * exp(exp_mult * m)``.

The GNN's cost does not grow with the number of weights, and the per-element work is two gathers
and two small matmuls, so the step costs ``O(P)`` with a small constant. Permuting hidden neurons
permutes the graph's nodes, so the update is permutation-equivariant (tested).

**Initialisation**: the head's last layer is zero, so ``update = step_mult * skip * adam`` in both
forms: with the defaults, ``Adam(lr=1e-3)`` at ``lr=1``.

Why gated: with the additive form, the context (shared by all weights of a neuron) gives every
weight of a neuron the same ``d`` even where its gradient is zero. Those weights then drift
together: weights from input pixels that are blank in every training image (they matter on test
images) and dead ReLU units, whose drift adds up over the fan-in. The meta-trained additive rule
did this on an MLP wider than its meta-training tasks (``benchmarks/l2o_quality.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from encoders import ACTIVATIONS, Role
from encoders.aggregation import NeighbourAggregation
from encoders.build import trace
from encoders.builder import GraphBuilder, named_tensors
from encoders.chaining import chain_parameters
from encoders.layers.neuron_pna import NeuronPNALayer
from l2o import features as F
from l2o.hub import register_rule
from l2o.rule import UpdateRule

__all__ = ["GraphContext", "GraphRuleBase", "NeuralGraphRule", "NeuronGraphBase", "describe_graph"]

Sums = tuple[Tensor, Tensor, Tensor]
"""Per-neuron sums of pooled features ``(in-weights, out-weights, own parameters)``, each ``[N, F]``."""

_NODE_KINDS = 3  # node-feature channels an element can sit on (a bias; a second per-neuron parameter)
_EDGE_CHANNELS = 3
_NUM_KINDS = _NODE_KINDS + 5 * _EDGE_CHANNELS  # 5 edge kinds x 3 channels


# what a graph chained from shapes gets wrong (see encoders.chaining), said whenever one replaces a trace
_CHAINED_GRAPH_CAVEAT = (
    "consecutive tensors are read as a chain of dense layers, so residual connections, normalization layers, "
    "attention heads, gates and tied weights are missing or wrong, and the rule acts on neuron permutations "
    "that are not the network's symmetries"
)


def describe_graph(
    params: Sequence[Tensor], model: nn.Module | None, example_inputs: tuple | dict | None = None
) -> tuple[GraphBuilder, list[tuple[str, Tensor]], list[int]]:
    """The neural graph for an optimizer's ``params``, described but not built, and where each
    param sits in it.

    With ``model``, its traced graph (exact; as :meth:`NeuralGraph.from_module` with
    ``example_inputs``). ``params`` are matched to the model's parameters by identity, or else by
    order when their shapes are those of ``model.parameters()`` (functional use with detached
    copies). If tracing fails or ``params`` do not match, a warning explains why (naming the module
    and operation that failed) and the graph is chained from shapes.

    Returns ``(builder, named, position)``: ``params[i]`` is ``named[position[i]]``. The rule reads
    the builder directly (:meth:`GraphBuilder.node_fields`, ``neighbourhood``,
    ``element_neurons``): building the full ``NeuralGraph`` would store every edge, which for a
    large model costs more memory than the model.
    """
    if model is not None:
        model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
        named = list(model.named_parameters())
        names = {id(p): n for n, p in named}
        if [tuple(p.shape) for p in params] == [tuple(q.shape) for _, q in named]:
            names = {id(p): n for p, (n, _) in zip(params, named)}
        missing = [i for i, p in enumerate(params) if id(p) not in names]
        if missing:
            warnings.warn(f"{len(missing)} optimized parameters are not parameters of the model given (first: index "
                          f"{missing[0]}); the graph is chained from parameter shapes instead", stacklevel=3)
        else:
            try:
                builder, traced = trace(model, example_inputs)
            except (ValueError, TypeError) as err:
                warnings.warn(f"could not trace the model ({err}). The graph is chained from parameter shapes "
                              f"instead: {_CHAINED_GRAPH_CAVEAT}", stacklevel=3)
            else:
                index = {n: k for k, (n, _) in enumerate(traced)}
                return builder, traced, [index[names[id(p)]] for p in params]
    named = named_tensors(list(params))
    return chain_parameters(named), named, list(range(len(params)))


@dataclass
class NeuronMap:
    """The neuron of every element of one parameter, in its matrix view ``[R, C]``
    (:func:`l2o.features.matrix_shape`), stored as compactly as its structure allows.

    ``along`` is ``"row"`` (the neuron depends on the row only: ``ids [R]``; e.g. the target of a
    linear weight), ``"col"`` (``ids [C]``; e.g. its source) or ``"full"`` (``ids [R, C]``).
    """

    along: str
    ids: Tensor

    @classmethod
    def of(cls, neurons: Tensor, shape: tuple[int, int]) -> NeuronMap:
        """Compress ``neurons``, which broadcast to ``shape`` ``[R, C]`` (``[R, 1]``: by row,
        ``[1, C]``: by column, ``[1, 1]``: one neuron)."""
        rows, cols = shape
        if neurons.shape[1] == 1 or (neurons == neurons[:, :1]).all():
            return cls("row", neurons[:, 0].expand(rows).clone())
        if neurons.shape[0] == 1 or (neurons == neurons[:1]).all():
            return cls("col", neurons[0].expand(cols).clone())
        return cls("full", neurons.clone())

    def counts(self, shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``(neurons, elements)``: how many elements of the ``[R, C]`` matrix each neuron holds."""
        rows, cols = shape
        if self.along == "row":
            return self.ids, torch.full((rows,), float(cols))
        if self.along == "col":
            return self.ids, torch.full((cols,), float(rows))
        return self.ids.reshape(-1), torch.ones(rows * cols)

    def pool(self, into: Tensor, values: Tensor, rows: slice) -> Tensor:
        """``into [N, F]`` plus the sums per neuron of ``values [F, r, C]`` (matrix rows ``rows``).

        Out of place, so the rule can be ``torch.func.vmap``-ed over a batch of models (an in-place
        add of batched values into an unbatched buffer is impossible under vmap).
        """
        if self.along == "row":
            return into.index_add(0, self.ids[rows], values.sum(2).T)
        if self.along == "col":
            return into.index_add(0, self.ids, values.sum(1).T)
        return into.index_add(0, self.ids[rows].reshape(-1), values.reshape(values.shape[0], -1).T)

    def to(self, device: torch.device) -> NeuronMap:
        return NeuronMap(self.along, self.ids.to(device))


@dataclass
class GraphContext:
    """What :class:`NeuralGraphRule` precomputes for one list of parameters (once per architecture).

    Per parameter ``i``: ``source[i]``/``target[i]`` (:class:`NeuronMap`) give the neurons each
    element connects (for a bias both are its neuron); ``kind[i]`` (also a :class:`NeuronMap`,
    into the kind embeddings) the element kind ids; ``on_edge[i]`` whether the elements are
    weights (edges) or neuron parameters (nodes); ``into_output[i]`` whether they are weights into
    the network's output neurons (the output layer). ``counts [N, 3]``: number of elements pooled into
    each neuron (in-weights, out-weights, own; 0 where none). ``aggregation`` does the GNN's neighbour reductions.
    Memory: ``O(R + C)`` per weight matrix or convolution, ``O(N)`` for the graph.
    """

    num_nodes: int
    aggregation: NeighbourAggregation
    source: list[NeuronMap]
    target: list[NeuronMap]
    kind: list[NeuronMap]
    on_edge: list[bool]
    into_output: list[bool]
    counts: Tensor
    node_role: Tensor
    node_activation: Tensor
    node_depth: Tensor

    @property
    def pool_sizes(self) -> Tensor:
        """``counts`` with 0 raised to 1 ``[N, 3]``: what pooled sums are divided by (an empty pool's
        sum is 0, and so is its mean) and what the log fan-in / fan-out features read."""
        return self.counts.clamp(min=1)


def _element_kinds(on_edge: bool, edge_kind: Tensor, channel: Tensor) -> Tensor:
    """Kind-embedding index of elements: their node channel, or their edge kind and channel."""
    if on_edge:
        return _NODE_KINDS + edge_kind * _EDGE_CHANNELS + channel.clamp(max=_EDGE_CHANNELS - 1)
    return channel.clamp(max=_NODE_KINDS - 1)


class NeuronGraphBase(UpdateRule):
    """What every neural-graph rule shares: the traced graph (:class:`GraphContext`), the pooling of
    per-element features into neurons, and the neuron-level GNN that reads them. Subclasses choose
    the statistics and per-element features (:attr:`feature_names`) and what the neuron states
    become (a per-element head's context, or per-neuron step sizes).

    Args:
        hidden: width of the neuron states.
        layers: GNN layers.
        max_depth: depths beyond it share the last depth embedding.
        extra_node_features: inputs of ``node_in`` after the pooled means and time features
            (e.g. fan-in), supplied by the subclass to :meth:`neuron_states`.

    Modules: ``node_in`` (pooled features, time features and extras -> neuron state), ``role`` /
    ``activation`` / ``depth`` embeddings and ``gnn`` (:class:`NeuronPNALayer` x ``layers``).
    """

    feature_names: tuple[str, ...] = F.COMPACT_FEATURE_NAMES
    """Names of the per-element features the neuron pools (and a head) read, in order."""

    def __init__(self, hidden: int = 32, layers: int = 2, max_depth: int = 32, extra_node_features: int = 0) -> None:
        super().__init__()
        if hidden < 1 or layers < 0:
            raise ValueError(f"hidden must be >= 1 and layers >= 0, got {hidden}, {layers}")
        self.max_depth = max_depth
        n_feat = len(self.feature_names)
        self.node_in = nn.Linear(3 * n_feat + F.NUM_TIME_FEATURES + extra_node_features, hidden)
        self.role = nn.Embedding(len(Role), hidden)
        self.activation = nn.Embedding(len(ACTIVATIONS), hidden)
        self.depth = nn.Embedding(max_depth + 1, hidden)
        self.gnn = nn.ModuleList(NeuronPNALayer(hidden) for _ in range(layers))

    # ------------------------------------------------------------------ per architecture
    def build_context(
        self, params: Sequence[Tensor], model: nn.Module | None = None, example_inputs: tuple | dict | None = None
    ) -> GraphContext:
        """Trace (or chain) the graph once and precompute every element's neurons and kind."""
        builder, named, position = describe_graph(params, model, example_inputs)
        device = params[0].device
        nodes = builder.node_fields()
        counts = torch.zeros(builder.num_nodes, 3)
        maps: dict[str, list[NeuronMap]] = {"source": [], "target": [], "kind": []}
        on_edge, into_output = [], []
        for k in position:  # per tensor, in O(rows + cols) for dense layers
            name, tensor = named[k]
            shape = F.matrix_shape(tensor.shape)
            edge, source, target, edge_kind, channel = builder.element_neurons(name, *shape)
            on_edge.append(edge)
            into_output.append(edge and bool((nodes["node_role"][target] == Role.OUTPUT).any()))
            for key, neurons in (("source", source), ("target", target),
                                 ("kind", _element_kinds(edge, edge_kind, channel))):
                maps[key].append(NeuronMap.of(neurons, shape))
            for column, key in ((0, "target"), (1, "source")) if edge else ((2, "source"),):
                counts[:, column].index_add_(0, *maps[key][-1].counts(shape))
        depth = nodes["node_depth"].clamp(max=self.max_depth)
        return GraphContext(
            num_nodes=builder.num_nodes,
            aggregation=NeighbourAggregation(builder.neighbourhood()).to(device),
            source=[m.to(device) for m in maps["source"]],
            target=[m.to(device) for m in maps["target"]],
            kind=[m.to(device) for m in maps["kind"]],
            on_edge=on_edge,
            into_output=into_output,
            counts=counts.to(device),
            node_role=nodes["node_role"].to(device),
            node_activation=nodes["node_activation"].to(device),
            node_depth=depth.to(device),
        )

    def _check_context(self, params: list[Tensor], context: GraphContext | None) -> GraphContext:
        if context is None:
            return self.build_context(params)
        if len(context.source) != len(params):
            raise ValueError(f"the context was built for {len(context.source)} parameters, got {len(params)}")
        return context

    def neuron_states(self, context: GraphContext, pooled: Tensor, time: Tensor, extra: Tensor | None = None) -> Tensor:
        """The neuron-level GNN: ``pooled [N, 3 F]`` (mean features of each neuron's in-weights,
        out-weights and own parameters), ``time [11]`` and ``extra [N, X]`` (the subclass's
        ``extra_node_features``) -> neuron states ``[N, hidden]``."""
        inputs = [pooled, time.expand(pooled.shape[0], -1)] + ([] if extra is None else [extra])
        x = self.node_in(torch.cat(inputs, dim=1))
        x = x + self.role(context.node_role) + self.activation(context.node_activation) + self.depth(context.node_depth)
        for layer in self.gnn:
            x = layer(x, context.aggregation)
        return x

    @staticmethod
    def pool(sums: Sums, context: GraphContext, i: int, feats: Tensor, rows: slice) -> Sums:
        """``sums`` (:meth:`empty_sums`) plus parameter ``i``'s features ``[F, r, C]`` (matrix rows
        ``rows``): a weight's go to its target's in-weight sums and its source's out-weight sums, a
        neuron parameter's to its neuron's own sums. Out of place (see :meth:`NeuronMap.pool`); only
        the sums that change are new tensors."""
        into, out, own = sums
        if context.on_edge[i]:
            return context.target[i].pool(into, feats, rows), context.source[i].pool(out, feats, rows), own
        return into, out, context.source[i].pool(own, feats, rows)

    @staticmethod
    def empty_sums(context: GraphContext, like: Tensor, features: int) -> Sums:
        """Zero sums ``(in-weights, out-weights, own parameters)``, each ``[N, features]``, with
        ``like``'s dtype and device, for :meth:`pool` (one zero tensor shared three times: pool
        never writes in place)."""
        zeros = like.new_zeros(context.num_nodes, features)
        return zeros, zeros, zeros

    @staticmethod
    def pooled_means(sums: Sums, context: GraphContext) -> Tensor:
        """``sums`` from :meth:`pool` -> the means ``[N, 3 F]`` :meth:`neuron_states` reads."""
        stacked = torch.stack(sums)  # [3, N, F]
        return (stacked / context.pool_sizes.T.unsqueeze(2)).permute(1, 0, 2).reshape(stacked.shape[1], -1)


class GraphRuleBase(NeuronGraphBase):
    """A neural-graph rule with a per-element head: the neuron states become the head's context.

    Args:
        hidden: width of the neuron states.
        layers: GNN layers.
        head_hidden: width of the per-element head.
        max_depth: depths beyond it share the last depth embedding.

    Modules, beyond :class:`NeuronGraphBase`'s: ``to_source`` / ``to_target`` (neuron state ->
    head context), ``kind`` (element-kind embedding), ``head_in`` (features -> head), ``head_time``
    (time features -> head) and ``head_out`` (head -> 2 outputs, zero-initialised so that a fresh
    rule is its base optimizer).
    """

    def __init__(self, hidden: int = 32, layers: int = 2, head_hidden: int = 16, max_depth: int = 32) -> None:
        super().__init__(hidden, layers, max_depth)
        if head_hidden < 1:
            raise ValueError(f"head_hidden must be >= 1, got {head_hidden}")
        n_feat = len(self.feature_names)
        self.to_source = nn.Linear(hidden, head_hidden)
        self.to_target = nn.Linear(hidden, head_hidden, bias=False)
        self.kind = nn.Embedding(_NUM_KINDS, head_hidden)
        self.head_in = nn.Linear(n_feat, head_hidden, bias=False)
        self.head_time = nn.Linear(F.NUM_TIME_FEATURES, head_hidden, bias=False)
        self.head_out = nn.Linear(head_hidden, 2)
        nn.init.zeros_(self.head_out.weight)
        nn.init.zeros_(self.head_out.bias)

    def neuron_tables(self, context: GraphContext, pooled: Tensor, time: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`neuron_states` -> ``(at_source [N, H], at_target [N, H], time_bias [H])``, the
        head's per-neuron and per-step context."""
        x = self.neuron_states(context, pooled, time)
        return self.to_source(x), self.to_target(x), self.head_time(time)

    def head_context(
        self, context: GraphContext, i: int, n_rows: int, tables: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, Tensor | None, list[tuple[Tensor, Tensor]]]:
        """Parameter ``i``'s head bias ``time_bias + at_source[source] + at_target[target] +
        kind[kind]`` (``tables`` from :meth:`neuron_tables`), split by how it varies over the
        ``[R, C]`` matrix view: ``rows [R, H]``, ``cols [C, H]`` (``None`` when nothing varies by
        column) and ``(ids [R, C], table [*, H])`` pairs for element-wise maps."""
        at_source, at_target, time_bias = tables
        rows, cols, full = time_bias.expand(n_rows, -1), None, []
        for neurons, table in ((context.source[i], at_source), (context.target[i], at_target),
                               (context.kind[i], self.kind.weight)):
            if neurons.along == "row":
                rows = rows + table[neurons.ids]
            elif neurons.along == "col":
                cols = table[neurons.ids] if cols is None else cols + table[neurons.ids]
            else:
                full.append((neurons.ids, table))
        return rows, cols, full

    def head(
        self, feats: Tensor, rows: slice, n_cols: int,
        head_context: tuple[Tensor, Tensor | None, list[tuple[Tensor, Tensor]]], inplace: bool = False,
    ) -> Tensor:
        """The per-element head on matrix rows ``rows`` of one parameter: ``feats [F, r * C]`` and
        its :meth:`head_context` -> ``out [2, r * C]`` (direction, magnitude).
        ``hidden = W_in feats + context``, SiLU, then a linear layer; ``inplace``: no autograd."""
        row_context, col_context, full_maps = head_context
        hidden = torch.mm(feats.reshape(feats.shape[0], -1).T, self.head_in.weight.T)  # [r * C, H]
        blocked = hidden.view(rows.stop - rows.start, n_cols, -1)
        blocked.add_(row_context[rows].unsqueeze(1))
        if col_context is not None:
            blocked.add_(col_context)
        for ids, table in full_maps:
            blocked.add_(table[ids[rows]])
        hidden = nn.functional.silu(hidden, inplace=inplace)
        return torch.addmm(self.head_out.bias.unsqueeze(1), self.head_out.weight, hidden.T)  # [2, r * C]



@register_rule("neural-graph")
class NeuralGraphRule(GraphRuleBase):
    """Learned update rule reading the network as a neural graph (see the module docstring).

    Args:
        hidden: width of the neuron states (32).
        layers: GNN layers (2).
        head_hidden: width of the per-element head (16).
        step_mult: ``b`` of the output form (1e-3).
        exp_mult: ``a`` of the output form (1e-3).
        skip: weight of the Adam direction (1.0).
        gated: output form ``b * (skip + d) * adam * exp(a * m)`` (``True``) or the additive
            ``b * (d + skip * adam) * exp(a * m)``.
        momentum_decays: EMA decays of the three momenta.
        rms_decay: EMA decay of the second moment.
        factored_decays: EMA decays of the factored (row/column) statistics.
        max_depth: depths beyond it share the last depth embedding.
        chunk_size: elements per block (memory knob, not part of the config).

    State: :func:`l2o.features.init_stats` (16 B/element). Context: :class:`GraphContext`.
    """

    def __init__(
        self,
        hidden: int = 32,
        layers: int = 2,
        head_hidden: int = 16,
        step_mult: float = 1e-3,
        exp_mult: float = 1e-3,
        skip: float = 1.0,
        gated: bool = True,
        momentum_decays: Sequence[float] = (0.9, 0.99, 0.999),
        rms_decay: float = 0.999,
        factored_decays: Sequence[float] = (0.9, 0.99, 0.999),
        max_depth: int = 32,
        chunk_size: int = 2**16,
    ) -> None:
        super().__init__(hidden, layers, head_hidden, max_depth)
        self._config = {
            "hidden": hidden, "layers": layers, "head_hidden": head_hidden, "step_mult": step_mult,
            "exp_mult": exp_mult, "skip": skip, "gated": gated, "momentum_decays": list(momentum_decays),
            "rms_decay": rms_decay, "factored_decays": list(factored_decays), "max_depth": max_depth,
        }
        self.decays = F.Decays(tuple(momentum_decays), rms_decay, tuple(factored_decays))
        self.step_mult, self.exp_mult, self.skip, self.gated = step_mult, exp_mult, skip, gated
        self.chunk_size = chunk_size

    def init_state(self, params: Sequence[Tensor]) -> dict[str, Any]:
        """Zero statistics, see :func:`l2o.features.init_stats`."""
        return F.init_stats(params)

    # ------------------------------------------------------------------ per step
    def forward(
        self, params: list[Tensor], grads: list[Tensor], state: dict[str, Any], context: GraphContext | None = None
    ) -> tuple[list[Tensor], dict[str, Any]]:
        """``(params, grads, state, context) -> (updates, new_state)``; ``updates[i]`` is shaped like
        ``params[i]`` (float32; float64 for float64 parameters)."""
        context = self._check_context(params, context)
        new_state = F.update_stats(params, grads, state, self.decays)
        pieces: list[list[Tensor]] = [[] for _ in params]
        for i, _, update in self._update_blocks(params, grads, new_state, context, inplace=False):
            pieces[i].append(update)
        updates = [
            (torch.cat(blocks) if len(blocks) > 1 else blocks[0]).reshape(p.shape) if blocks
            else torch.zeros_like(new_state["rms"][i])
            for i, (p, blocks) in enumerate(zip(params, pieces))
        ]
        return updates, new_state

    def stream_updates(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        state: dict[str, Any],
        context: GraphContext | None,
        apply: Callable[[int, slice, Tensor], None],
    ) -> dict[str, Any]:
        """:meth:`forward` in place (see :meth:`l2o.rule.UpdateRule.stream_updates`): statistics
        advance in place and updates go out in row blocks of about ``chunk_size`` elements, so
        the step's temporary memory is a few blocks, not a copy of the model."""
        context = self._check_context(params, context)
        new_state = F.update_stats(params, grads, state, self.decays, inplace=True)
        for i, rows, update in self._update_blocks(params, grads, new_state, context, inplace=True):
            apply(i, rows, update)
        return new_state

    def fused_step(self, context: GraphContext) -> Any:
        """:class:`l2o.fused.FusedStep` on ``context``: the same update, compiled with
        ``torch.compile`` into a few fused loops per parameter (see :mod:`l2o.fused`)."""
        from l2o.fused import FusedStep  # imports torch._dynamo: only when a fused step is wanted

        return FusedStep(self, context)

    def _update_blocks(
        self, params: list[Tensor], grads: list[Tensor], state: dict[str, Any], context: GraphContext, inplace: bool
    ) -> Iterator[tuple[int, slice, Tensor]]:
        """``(i, rows, update [r * C])`` for every row block of every parameter, in order; ``state``
        is the state after :func:`~l2o.features.update_stats`. All neuron work happens before the
        first block is yielded, so the caller may then update ``params[i][rows]`` in place."""
        step, dtype = state["step"], self.node_in.weight.dtype
        time = F.time_features(step, self.node_in.weight)
        n_feat = len(self.feature_names)

        # neurons pool the features of their in-weights, out-weights and own parameters
        sums = self.empty_sums(context, self.node_in.weight, n_feat)
        scales = []  # per tensor, reused by the second pass
        for i, (p, g) in enumerate(zip(params, grads)):
            stats = F.tensor_stats(state, i)
            scales.append(F.compact_scales(p, g, stats))
            for rows, feats in F.compact_features(p, g, stats, self.chunk_size, inplace, scales[i]):
                sums = self.pool(sums, context, i, feats.to(dtype), rows)
        pooled = self.pooled_means(sums, context)
        tables = self.neuron_tables(context, pooled, time)
        corrections: dict[torch.dtype, tuple[Tensor, Tensor]] = {}

        # per element: hidden = W_in features + U[source] + V[target] + kind + time, then the head
        for i, (p, g) in enumerate(zip(params, grads)):
            stats = F.tensor_stats(state, i)
            mom, rms = stats.mom[0].reshape(-1), stats.rms.reshape(-1)
            n_rows, n_cols = F.matrix_shape(p.shape)
            head_context = self.head_context(context, i, n_rows, tables)
            if mom.dtype not in corrections:
                corrections[mom.dtype] = F.adam_corrections(step, self.decays, mom)
            for rows, feats in F.compact_features(p, g, stats, self.chunk_size, inplace, scales[i]):
                out = self.head(feats.to(dtype), rows, n_cols, head_context, inplace)
                span = slice(rows.start * n_cols, rows.stop * n_cols)
                adam = F.adam_direction(mom[span], rms[span], step, self.decays, inplace=inplace,
                                        corrections=corrections[mom.dtype])
                same_dtype = out.dtype == adam.dtype  # in place only where no promotion is needed
                yield i, rows, F.direction_magnitude_update(out[0], out[1], adam, self.step_mult, self.exp_mult,
                                                            self.skip, inplace and same_dtype, self.gated)
