"""The fused step of :class:`~l2o.graph_rule.NeuralGraphRule`: the same update as its reference
path (:meth:`~l2o.graph_rule.NeuralGraphRule.stream_updates`), written so that ``torch.compile``
turns each parameter's work into a few fused loops.

Why a second implementation: the reference path is a sequence of eager kernels over row blocks of
about 65k elements. Each kernel reads and writes whole feature blocks (``[9, r, C]`` features,
``[r * C, 16]`` head activations), so a step moves about 150 bytes per parameter through memory and
runs tens of kernels per block. Here every per-element quantity is an expression over the
parameter, its gradient and its statistics, and the per-element head is unrolled over its hidden
units, so inductor (C++/OpenMP on CPU, Triton on GPU) turns a tensor's work into a few loops:

1. :func:`tensor_stats_`: momenta and second moment advance in place; the row and column means of
   ``g²`` and the sums of squares of ``g``, ``p`` and the momenta (the feature scales) are reduced,
   then the 9 features are summed per row, per column or per element, as the tensor's neuron maps
   need them for pooling;
2. :meth:`~l2o.graph_rule.GraphRuleBase.neuron_tables`: the neuron-level GNN on ``O(neurons)`` data,
   as in the reference;
3. :func:`tensor_update_`: the features again, the head (hidden units one at a time, so the
   ``[n, 16]`` activations never exist), Adam's direction, the update and the parameter write.

Between the steps, per-tensor tables of size ``O(R + C)`` are formed eagerly
(:func:`head_tables`), so the element loop reads contiguous rows instead of gathering through
neuron ids. The arithmetic is the reference's; only the order of floating-point operations
differs, so the two agree to float rounding (tested: relative error <= 1e-5 over 50 steps), not
bit for bit.

The per-tensor functions are compiled with static shapes, once per distinct parameter shape and
neuron-map structure (the layers of a deep network share one compilation), and inductor's on-disk
cache keeps the result across processes. Static shapes because with symbolic ones inductor cannot
fuse the row-broadcast part of the element loop with the rest, and stores the 16 hidden units.
Run eagerly (:class:`FusedStep` with ``compiled=False``), the same code is correct but slow; tests
run both.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch._dynamo
from torch import Tensor
from torch.utils._pytree import tree_leaves

from l2o import features as F

if TYPE_CHECKING:
    from l2o.graph_rule import GraphContext, NeuralGraphRule, NeuronMap

__all__ = ["RECOMPILE_LIMIT", "FusedStep", "FusedStepBase", "all_finite", "compile_unavailable", "compiled_all_finite",
           "head_outputs", "head_tables", "Specialized", "compile_static", "pool_sites", "pool_sums", "table_context",
           "tensor_stats_", "tensor_update_"]

_N_FEAT = len(F.COMPACT_FEATURE_NAMES)
_N_LINEAR = 5  # features g, p, m0, m1, m2: divided by their RMS over the tensor (the scales)

_LOG2_E = 1.4426950408889634

RECOMPILE_LIMIT = 1024
"""Compilations kept per compiled function: one per distinct parameter shape and neuron-map
structure here, one per architecture and group size in :mod:`l2o.meta.vectorized` (dynamo's default
of 8 would quietly send the ninth back to eager code)."""

_INDUCTOR_OPTIONS = {"realize_opcount_threshold": 10**6, "realize_cpu_opcount_threshold": 10**6,
                     "realize_reads_threshold": 10**6, "compile_threads": 1}
"""Never store a per-element intermediate: by default inductor writes an expression with many
operations and several readers to memory (each hidden unit's pre-activation, read twice by SiLU),
which here would add 64 bytes per element of traffic and memory. Recomputing it is free, since
inductor's code generation shares identical sub-expressions within a loop. ``compile_threads=1``:
inductor's pool of compile threads deadlocked now and then here (torch 2.13, CPU; a cache hit
waited forever on a compile future, seen in the test suite); each of these graphs has only a few
kernels, so compiling them in the calling thread costs little."""


def compile_static(fn: Callable) -> Callable:
    """``fn`` through ``torch.compile`` as the fused step compiles: static shapes, the options above."""
    return torch.compile(fn, dynamic=False, options=_INDUCTOR_OPTIONS)


def _features(p: Tensor, g: Tensor, mom: Tensor, rms: Tensor, row_vhat: Tensor, col0: Tensor) -> list[Tensor]:
    """The 9 compact features (:data:`l2o.features.COMPACT_FEATURE_NAMES`) of a ``[R, C]`` tensor,
    the first five *not* divided by their scales (callers fold the scales in where it is cheaper:
    into the pooled sums, or into the head's weights, 80 fewer multiplications per element).

    ``row_vhat [R]`` is ``row[0] / mean(row[0])``, so Adafactor's estimate is ``row_vhat ⊗ col0``.
    """
    rsqrt_v = torch.rsqrt(rms + F.EPS)
    rsqrt_vhat = torch.rsqrt(row_vhat[:, None] * col0[None, :] + F.EPS)
    return [g, p, mom[0], mom[1], mom[2], mom[0] * rsqrt_v, mom[1] * rsqrt_v, mom[2] * rsqrt_v, g * rsqrt_vhat]


def _silu(x: Tensor) -> Tensor:
    """``x * sigmoid(x)`` through ``exp2``. On the CPU inductor stores any value that contains
    ``exp`` or ``sigmoid`` and has two readers (here each hidden unit, read by the direction and
    the magnitude): 64 bytes per element of extra traffic. ``exp2`` is not on its list and rounds
    the same to within an ulp."""
    return x / (1 + torch.exp2(x * -_LOG2_E))


def head_outputs(
    features: Sequence[Tensor], weight: Tensor, w_out: Tensor, b_out: Tensor, context: Callable[[int], Tensor],
    activation: Callable[[Tensor], Tensor] = _silu,
) -> tuple[Tensor, Tensor]:
    """The per-element head, unrolled over its ``H`` hidden units so that the ``[n, H]``
    activations never exist: ``features`` (9 tensors ``[R, C]``), ``weight [H, 9]`` (scales folded
    in), ``w_out [2, H]``, ``b_out [2]`` and ``context(j)`` (unit ``j``'s bias, broadcastable to
    ``[R, C]``) -> ``(direction, magnitude)``, each ``[R, C]``. ``activation`` is the head's
    (SiLU); ``benchmarks/head_cost.py`` times others through this same code."""
    direction, magnitude = b_out[0], b_out[1]
    for j in range(weight.shape[0]):
        hidden = context(j)
        for k, f in enumerate(features):
            hidden = hidden + f * weight[j, k]
        hidden = activation(hidden)
        direction, magnitude = direction + w_out[0, j] * hidden, magnitude + w_out[1, j] * hidden
    return direction, magnitude


def tensor_stats_(
    param: Tensor, grad: Tensor, mom: Tensor, rms: Tensor, row: Tensor, col: Tensor,
    rates: tuple[Tensor, Tensor, Tensor], pools: tuple[str, ...], dtype: torch.dtype,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Advance one tensor's statistics in place and sum its features for pooling.

    Args:
        param: ``[R, C]``, the matrix view (:func:`l2o.features.matrix_shape`) of a parameter. Views
            are taken outside the compiled code: reshaping inside would make dynamo specialise it.
        grad: ``[R, C]``, its gradient.
        mom: ``[3, R, C]`` momenta, advanced in place as by :func:`l2o.features.update_stats`.
        rms: ``[R, C]`` second moment, advanced in place.
        row: ``[3, R]`` factored row statistics, advanced in place.
        col: ``[3, C]`` factored column statistics, advanced in place.
        rates: ``1 - decay`` of the momenta ``[3]``, second moment ``[]`` and factored statistics ``[3]``.
        pools: for each neuron map the pooling needs, its ``along`` (``"row"``, ``"col"`` or ``"full"``).
        dtype: the rule's dtype (features are pooled in it).

    Returns ``(scales [5], row_vhat [R], sums)``: the feature scales
    (:func:`l2o.features.compact_scales`), ``row[0] / mean(row[0])``, and per entry of ``pools``
    the sums of the (scaled) features over each row ``[R, 9]``, each column ``[C, 9]`` or the
    features themselves ``[R * C, 9]``.
    """
    n_rows, n_cols = rms.shape
    p, g = param.to(rms.dtype), grad.to(rms.dtype)
    mom_rate, rms_rate, fac_rate = rates
    g_sq = g * g
    mom.copy_(torch.lerp(mom, g.unsqueeze(0), mom_rate.view(3, 1, 1)))
    rms.copy_(torch.lerp(rms, g_sq, rms_rate))
    row.copy_(torch.lerp(row, (g_sq.sum(1) / max(n_cols, 1) + F._FACTORED_EPS)[None], fac_rate.view(3, 1)))
    col.copy_(torch.lerp(col, (g_sq.sum(0) / max(n_rows, 1) + F._FACTORED_EPS)[None], fac_rate.view(3, 1)))
    n = max(n_rows * n_cols, 1)
    sums_sq = torch.stack([g_sq.sum(), p.square().sum(), *mom.square().sum((1, 2))])
    scales = sums_sq.div(n).add(F._NORM_EPS).rsqrt()
    row_vhat = row[0] / row[0].mean()
    feats = [f.to(dtype) for f in _features(p, g, mom, rms, row_vhat, col[0])]
    feature_scales = torch.cat([scales.to(dtype), scales.new_ones(_N_FEAT - _N_LINEAR, dtype=dtype)])
    return scales, row_vhat, pool_sums(feats, feature_scales, pools)


def pool_sums(feats: Sequence[Tensor], feature_scales: Tensor, pools: tuple[str, ...]) -> list[Tensor]:
    """``feats`` (``F`` tensors ``[R, C]``) times ``feature_scales [F]``, summed as each entry of
    ``pools`` needs them: per row ``[R, F]``, per column ``[C, F]`` or per element ``[R * C, F]``."""
    sums = []
    for along in pools:
        if along == "row":
            sums.append(torch.stack([f.sum(1) for f in feats], 1) * feature_scales)
        elif along == "col":
            sums.append(torch.stack([f.sum(0) for f in feats], 1) * feature_scales)
        else:
            sums.append(torch.stack([f.reshape(-1) for f in feats], 1) * feature_scales)
    return sums


def head_tables(
    neuron_maps: Sequence[tuple[NeuronMap, Tensor]], time_bias: Tensor, n_rows: int, n_cols: int
) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
    """One tensor's head context ``time_bias + sum(table[neuron])`` over its ``(neuron map, table
    [*, H])`` pairs, split by how it varies: ``rows [H, R]``, ``cols [H, C]`` (contiguous, so the
    element loop reads them without a stride) and ``(ids [R, C], table [H, *])`` for element-wise maps."""
    rows, cols, full = time_bias[:, None].expand(-1, n_rows), time_bias.new_zeros(time_bias.shape[0], n_cols), []
    for neurons, table in neuron_maps:
        if neurons.along == "row":
            rows = rows + table[neurons.ids].T
        elif neurons.along == "col":
            cols = cols + table[neurons.ids].T
        else:
            full.append((neurons.ids, table.T.contiguous()))
    return rows.contiguous(), cols.contiguous(), full


def table_context(tables: tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]) -> Callable[[int], Tensor]:
    """``context(j)`` for :func:`head_outputs` from :func:`head_tables`: hidden unit ``j``'s bias
    over the ``[R, C]`` tensor (row part + column part + element-wise gathers)."""
    rows, cols, full = tables

    def context(j: int) -> Tensor:
        hidden = rows[j][:, None] + cols[j][None, :]
        for ids, table in full:
            hidden = hidden + table[j][ids]
        return hidden

    return context


def tensor_update_(
    param: Tensor, grad: Tensor, mom: Tensor, rms: Tensor, col: Tensor, row_vhat: Tensor, scales: Tensor,
    tables: tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]], head: tuple[Tensor, Tensor, Tensor],
    corrections: Tensor, lr: Tensor, weight_decay: Tensor, frozen: Tensor, form: tuple[float, float, float, bool],
) -> None:
    """One tensor's update, written into ``param`` in place: features, head, Adam's direction.

    Args:
        param: ``[R, C]``, written in place, so it must be a view of the parameter.
        grad: ``[R, C]``.
        mom: ``[3, R, C]``, as advanced by :func:`tensor_stats_`.
        rms: ``[R, C]``, as advanced by :func:`tensor_stats_`.
        col: ``[3, C]``, as advanced by :func:`tensor_stats_`.
        row_vhat: ``[R]``, from :func:`tensor_stats_`.
        scales: ``[5]``, from :func:`tensor_stats_`.
        tables: :func:`head_tables`.
        head: the head's ``(input weight [H, 9], output weight [2, H], output bias [2])``.
        corrections: ``[2]`` reciprocals of Adam's bias corrections ``1 / (1 - b1^t), 1 / sqrt(1 - b2^t)``.
        lr: 0-d learning rate.
        weight_decay: 0-d decoupled weight decay.
        frozen: 0-d bool: the parameter is left as it is.
        form: ``(step_mult, exp_mult, skip, gated)`` of :func:`l2o.features.direction_magnitude_update`.
    """
    p, g = param.to(rms.dtype), grad.to(rms.dtype)
    w_in, w_out, b_out = head
    weight = torch.cat([w_in[:, :_N_LINEAR] * scales.to(w_in.dtype), w_in[:, _N_LINEAR:]], dim=1)
    feats = [f.to(w_in.dtype) for f in _features(p, g, mom, rms, row_vhat, col[0])]

    direction, magnitude = head_outputs(feats, weight, w_out, b_out, table_context(tables))
    adam = mom[0] * corrections[0] / (torch.sqrt(rms.clamp(min=1e-30)) * corrections[1] + 1e-8)
    update = F.direction_magnitude_update(direction, magnitude, adam, *form[:3], gated=form[3])
    update = update.to(param.dtype) + weight_decay.to(param.dtype) * param
    param.copy_(torch.where(frozen, param, param - lr.to(param.dtype) * update))


def _matrix_views(param: Tensor, grad: Tensor, stats: F.TensorStats) -> tuple[Tensor, ...]:
    """``(param [R, C], grad [R, C], mom [3, R, C], rms [R, C], row [3, R], col [3, C])``: views
    (``param``'s shares its storage, so writes reach the parameter)."""
    n_rows, n_cols = F.matrix_shape(param.shape)
    return (param.view(n_rows, n_cols), grad.reshape(n_rows, n_cols), stats.mom.view(3, n_rows, n_cols),
            stats.rms.view(n_rows, n_cols), stats.row, stats.col)


def pool_sites(context: GraphContext, i: int) -> list[tuple[str, NeuronMap, int]]:
    """Where parameter ``i``'s features are pooled: ``(along, neurons, column block of pooled)``
    for in-weights (block 0, by target), out-weights (1, by source) or own parameters (2)."""
    if context.on_edge[i]:
        return [(context.target[i].along, context.target[i], 0), (context.source[i].along, context.source[i], 1)]
    return [(context.source[i].along, context.source[i], 2)]


def _signature(args: tuple) -> tuple:
    """What a static-shape compilation of a call with ``args`` depends on: each tensor's shape,
    strides, dtype and device, and every other leaf's value."""
    return tuple((tuple(a.shape), a.stride(), a.dtype, a.device) if isinstance(a, Tensor) else a
                 for a in tree_leaves(args))


class Specialized:
    """``fn`` compiled once per call signature (:func:`_signature`), each in a copy of ``fn`` with
    its own code object, and the copy for each call site (a parameter's index) remembered.

    Why: dynamo keeps a function's compilations on its code object and, at every call, evaluates
    their guards in turn until one passes. With one compilation per parameter shape, a model's
    lookups then cost tens of microseconds each (about 80 µs per call on a 2-layer transformer,
    several milliseconds per step). Here every copy holds one compilation, so its guards are
    checked once; a call site whose tensors change (a new dtype) still recompiles in its copy.
    Identical graphs compile once: inductor's cache shares them between copies."""

    def __init__(self, fn: Callable, compiled: bool) -> None:
        self.fn, self.compiled = fn, compiled
        self._by_signature: dict[tuple, Callable] = {}
        self._by_site: dict[Any, Callable] = {}

    def __call__(self, site: Any, *args: Any) -> Any:
        fn = self._by_site.get(site)
        if fn is None:
            if not self.compiled:
                fn = self.fn
            else:
                key = _signature(args)
                if key not in self._by_signature:
                    code = self.fn.__code__.replace(co_name=f"{self.fn.__name__}_{len(self._by_signature)}")
                    copy = types.FunctionType(code, self.fn.__globals__, code.co_name, self.fn.__defaults__,
                                              self.fn.__closure__)
                    self._by_signature[key] = compile_static(copy)
                fn = self._by_signature[key]
            self._by_site[site] = fn
        return fn(*args)


class FusedStepBase:
    """What every fused step shares: the calling convention, the rule's ``O(neurons)`` method
    (:attr:`neuron_method`, compiled once) and the per-parameter hyperparameters as tensors.

    Call a fused step as ``new_state = step(params, grads, state, lr, weight_decay, frozen)``
    (lists with one float or tensor, or bool, per parameter); parameters and statistics are updated
    in place, the returned state holds the new step counter. Subclasses write ``_step``, the passes
    over the parameters.

    ``compiled=True`` runs the passes and the neuron method through ``torch.compile`` (static
    shapes; learning rates, weight decay and frozen flags are tensors, so schedules and missing
    gradients do not recompile); ``False`` runs the same functions eagerly (slow; for tests and
    debugging).
    """

    neuron_method = "neuron_tables"
    """The rule's method that runs on ``O(neurons)`` data between the passes (compiled once)."""

    def __init__(self, rule: torch.nn.Module, context: GraphContext, compiled: bool = True) -> None:
        self.rule, self.context = rule, context
        method = getattr(type(rule), self.neuron_method)  # called with the rule as first argument, as dynamo guards it
        self._context = compile_static(method) if compiled else method

    def __call__(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: dict[str, Any],
                 lr: Sequence[float | Tensor], weight_decay: Sequence[float | Tensor],
                 frozen: Sequence[bool]) -> dict[str, Any]:
        with warnings.catch_warnings(), torch.no_grad(), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            warnings.simplefilter("ignore", UserWarning)  # inductor's notes on its own fallbacks
            return self._step(params, grads, state, lr, weight_decay, frozen)

    def _step(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: dict[str, Any],
              lr: Sequence[float | Tensor], weight_decay: Sequence[float | Tensor],
              frozen: Sequence[bool]) -> dict[str, Any]:
        raise NotImplementedError

    def _checked_context(self, params: Sequence[Tensor]) -> GraphContext:
        """The context, after checking it was built for as many parameters as ``params``."""
        if len(self.context.source) != len(params):
            raise ValueError(f"the context was built for {len(self.context.source)} parameters, got {len(params)}")
        return self.context

    def _group_tensors(self, lr: Sequence[float | Tensor], weight_decay: Sequence[float | Tensor],
                       frozen: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
        """Per-parameter learning rates, weight decays and frozen flags as tensors (so that they
        never recompile the update)."""
        device = self.rule.node_in.weight.device
        return (torch.as_tensor([float(x) for x in lr], device=device),
                torch.as_tensor([float(x) for x in weight_decay], device=device),
                torch.as_tensor(list(frozen), dtype=torch.bool, device=device))


class FusedStep(FusedStepBase):
    """The fused step of one :class:`~l2o.graph_rule.NeuralGraphRule` on one context, called as
    :class:`FusedStepBase` says: :func:`tensor_stats_` per tensor, the rule's ``neuron_tables``,
    then :func:`tensor_update_` per tensor (each compiled per tensor signature, :class:`Specialized`).
    """

    def __init__(self, rule: NeuralGraphRule, context: GraphContext, compiled: bool = True) -> None:
        super().__init__(rule, context, compiled)
        self._stats, self._update = Specialized(tensor_stats_, compiled), Specialized(tensor_update_, compiled)

    def _step(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: dict[str, Any],
              lr: Sequence[float | Tensor], weight_decay: Sequence[float | Tensor],
              frozen: Sequence[bool]) -> dict[str, Any]:
        rule, context = self.rule, self._checked_context(params)
        dtype = rule.node_in.weight.dtype
        step = state["step"] + 1
        pooled = rule.node_in.weight.new_zeros(context.num_nodes, 3 * _N_FEAT)
        rates: dict[torch.dtype, tuple[Tensor, Tensor, Tensor]] = {}
        found = []
        views = [_matrix_views(p, g, F.tensor_stats(state, i)) for i, (p, g) in enumerate(zip(params, grads))]
        for i, (p, g, mom, rms, row, col) in enumerate(views):
            if rms.dtype not in rates:
                rates[rms.dtype] = tuple(F._rates(d, rms) for d in rule.decays)
            pools = pool_sites(context, i) if p.numel() else []
            along = tuple(a for a, _, _ in pools)
            found.append(self._stats(i, p, g, mom, rms, row, col, rates[rms.dtype], along, dtype))
            for (_, neurons, block), sums in zip(pools, found[i][2]):
                pooled[:, block * _N_FEAT:(block + 1) * _N_FEAT].index_add_(0, neurons.ids.reshape(-1), sums)
        time = F.time_features(step, rule.node_in.weight)
        means = pooled / context.pool_sizes.repeat_interleave(_N_FEAT, 1)
        at_source, at_target, time_bias = self._context(rule, context, means, time)
        head = (rule.head_in.weight, rule.head_out.weight, rule.head_out.bias)
        form = (rule.step_mult, rule.exp_mult, rule.skip, rule.gated)
        lrs, wds, frozen_t = self._group_tensors(lr, weight_decay, frozen)
        corrections = {}
        for i, (p, g, mom, rms, _, col) in enumerate(views):
            if p.numel() == 0:
                continue
            if rms.dtype not in corrections:
                correction1, root_correction2 = F.adam_corrections(step, rule.decays, rms)
                corrections[rms.dtype] = torch.stack([1 / correction1, 1 / root_correction2])
            maps = ((context.source[i], at_source), (context.target[i], at_target), (context.kind[i], rule.kind.weight))
            tables = head_tables(maps, time_bias, *rms.shape)
            scales, row_vhat, _ = found[i]
            self._update(i, p, g, mom, rms, col, row_vhat, scales, tables, head, corrections[rms.dtype], lrs[i], wds[i],
                         frozen_t[i], form)
        return dict(state, step=step)


def all_finite(tensors: Sequence[Tensor]) -> Tensor:
    """Whether every element of every tensor is finite: a 0-d bool tensor. ``NeuralGraphOpt``
    compiles it next to the fused step for its check of the gradients: compiled it is one pass over
    each gradient, where eager ``isfinite(g).all()`` makes four and allocates."""
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def compiled_all_finite() -> Callable[[Sequence[Tensor]], Tensor]:
    """:func:`all_finite`, compiled as the fused step is."""
    return compile_static(all_finite)


def compile_unavailable(device: torch.device | str) -> str | None:
    """``None`` if ``torch.compile`` can compile for ``device`` here, else the reason it cannot."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        return f"no fused step for {kind} tensors"
    if torch._dynamo.config.disable:
        return "torch.compile is disabled (TORCH_COMPILE_DISABLE=1 or torch._dynamo.config.disable)"
    if kind == "cpu":
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as err:  # noqa: BLE001 - any failure to find a compiler
            return f"no C++ compiler for inductor's CPU backend ({err})"
    else:
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed (inductor's GPU backend)"
    return None
