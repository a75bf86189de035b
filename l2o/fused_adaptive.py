"""The fused steps of the Prodigy-based rules: their reference updates in two compiled passes.

1. :func:`prodigy_pass_`, one compiled function over the whole model: per tensor
   (:func:`adaptive_stats_`) Prodigy's moments and gradient sum advance in place, and the tensor's
   share of the estimate of ``d`` (``<g, x0 - x>`` and ``||s||_1``), the feature scales and the
   per-neuron sums of its 7 features are reduced in the same loop (the features use the step's
   ``d`` before the update, so they need nothing from the other tensors); then the new ``d``;
2. between the passes, on ``O(neurons)`` data: the neuron GNN (compiled once) and, for
   :class:`~l2o.adaptive_rule.AdaptiveGraphRule`, each tensor's head tables; for
   :class:`~l2o.stepsize_rule.StepSizeGraphRule`, the per-neuron log step sizes;
3. the update: for the adaptive rule :func:`adaptive_update_` per tensor (the features again, the
   head unrolled over its hidden units, Prodigy's direction with the new ``d``, the update, the
   distance travelled and the parameter write); for the step-size rule :func:`scaled_updates_`,
   one compiled function over the whole model (Prodigy's update times the rank-1 table of step
   sizes; no per-element head).

Whole-model functions are one call and one guard check per step: per-tensor calls cost about
0.2-0.5 ms each on a CPU, which dominated the step of small models.

Same arithmetic as the references, in another order: the two agree to float rounding (tested over
50 steps), not bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from l2o import distance as D
from l2o import features as F
from l2o.fused import (
    FusedStepBase,
    Specialized,
    compile_static,
    head_outputs,
    head_tables,
    pool_sites,
    pool_sums,
    table_context,
)
from l2o.orthogonal import orthogonal_direction

if TYPE_CHECKING:
    from l2o.adaptive_rule import AdaptiveGraphRule
    from l2o.graph_rule import GraphContext
    from l2o.stepsize_rule import StepSizeGraphRule

__all__ = [
    "FusedAdaptiveStep",
    "FusedStepSizeStep",
    "adaptive_stats_",
    "adaptive_update_",
    "prodigy_pass_",
    "scaled_update_",
    "scaled_updates_",
]

_N_SCALED = 5  # features g, p, m, s, x0 - x: divided by their RMS over the tensor


def _features(p: Tensor, g: Tensor, mom: Tensor, rms: Tensor, grad_sum: Tensor, shift: Tensor, d: Tensor,
              eps: float) -> list[Tensor]:
    """:data:`l2o.distance.FEATURE_NAMES` of a ``[R, C]`` tensor (the first 5 not yet scaled)."""
    denominator = torch.sqrt(rms.clamp(min=1e-30)) + d * eps
    return [g, p, mom, grad_sum, shift, mom / denominator, d * g / denominator]


def adaptive_stats_(
    param: Tensor, grad: Tensor, mom: Tensor, rms: Tensor, grad_sum: Tensor, shift: Tensor, d: Tensor,
    weight: Tensor, betas: tuple[float, float, float], eps: float, pools: tuple[str, ...], dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """Advance one tensor's statistics in place and reduce what the step needs from it.

    Args:
        param: ``[R, C]`` matrix view of the parameter.
        grad: ``[R, C]``, its gradient.
        mom: ``[R, C]`` Prodigy's ``m``, advanced in place.
        rms: ``[R, C]`` Prodigy's ``v``, advanced in place.
        grad_sum: ``[R, C]`` Prodigy's ``s``, advanced in place.
        shift: ``[R, C]`` ``x0 - x`` (read only here).
        d: 0-d, the step's ``d`` before the update.
        weight: 0-d, ``d^2 / d0``.
        betas: ``(b1, b2, sqrt(b2))``.
        pools: ``along`` of each neuron map the pooling needs.
        dtype: the rule's dtype (features are pooled in it).

    Returns ``(dot, l1, scales [5], sums)``: ``<g, shift>``, ``||s||_1``, the feature scales and
    :func:`l2o.fused.pool_sums` of the scaled features.
    """
    p, g = param.to(mom.dtype), grad.to(mom.dtype)
    b1, b2, b3 = betas
    d = d.to(mom.dtype)
    mom.copy_(b1 * mom + (1 - b1) * d * g)
    rms.copy_(b2 * rms + (1 - b2) * (d * d) * (g * g))
    grad_sum.copy_(b3 * grad_sum + weight.to(mom.dtype) * g)
    dot, l1 = (g * shift).sum(), grad_sum.abs().sum()
    feats = _features(p, g, mom, rms, grad_sum, shift, d, eps)
    n = max(mom.numel(), 1)
    scales = torch.stack([f.square().sum() for f in feats[:_N_SCALED]]).div(n).add(1e-30).rsqrt()
    feature_scales = torch.cat([scales.to(dtype), scales.new_ones(len(feats) - _N_SCALED, dtype=dtype)])
    return dot, l1, scales, pool_sums([f.to(dtype) for f in feats], feature_scales, pools)


def moved_by(lr: Tensor, frozen: Tensor) -> Tensor:
    """The factor of this step's update in ``x0 - x`` (:func:`l2o.distance.moved`): ``lr``, or 0
    for a frozen parameter."""
    return torch.where(frozen, torch.zeros_like(lr), lr)


def adaptive_update_(
    param: Tensor, grad: Tensor, mom: Tensor, rms: Tensor, grad_sum: Tensor, shift: Tensor, scales: Tensor,
    tables: tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]], head: tuple[Tensor, Tensor, Tensor],
    d: Tensor, new_d: Tensor, size: Tensor, form: tuple[float, float], lr: Tensor, weight_decay: Tensor,
    frozen: Tensor,
) -> None:
    """One tensor's update, written into ``param`` (and its step into ``shift``) in place.

    Args:
        param: ``[R, C]``, a view of the parameter.
        grad: ``[R, C]``.
        mom: ``[R, C]``, after :func:`adaptive_stats_`.
        rms: ``[R, C]``, after :func:`adaptive_stats_`.
        grad_sum: ``[R, C]``, after :func:`adaptive_stats_`.
        shift: ``[R, C]`` ``x0 - x``, advanced in place by the step applied, ``lr * update``.
        scales: ``[5]`` from :func:`adaptive_stats_`.
        tables: :func:`l2o.fused.head_tables`.
        head: ``(input weight [H, 7], output weight [2, H], output bias [2])``.
        d: 0-d, the estimate before this step.
        new_d: 0-d, the estimate after it.
        size: 0-d, ``d c_k``: Prodigy's step size.
        form: ``(eps, exp_mult)``.
        lr: 0-d learning rate.
        weight_decay: 0-d decoupled weight decay.
        frozen: 0-d bool: the parameter is left as it is.
    """
    eps, exp_mult = form
    p, g = param.to(mom.dtype), grad.to(mom.dtype)
    w_in, w_out, b_out = head
    weight = torch.cat([w_in[:, :_N_SCALED] * scales.to(w_in.dtype), w_in[:, _N_SCALED:]], dim=1)
    feats = [f.to(w_in.dtype) for f in _features(p, g, mom, rms, grad_sum, shift, d.to(mom.dtype), eps)]
    direction, magnitude = head_outputs(feats, weight, w_out, b_out, table_context(tables))
    base = mom / (torch.sqrt(rms.clamp(min=1e-30)) + new_d.to(mom.dtype) * eps)
    update = size.to(mom.dtype) * (1 + direction.to(mom.dtype)) * base * torch.exp(exp_mult * magnitude.to(mom.dtype))
    shift.add_(moved_by(lr, frozen).to(mom.dtype) * update)
    update = update.to(param.dtype) + weight_decay.to(param.dtype) * param
    param.copy_(torch.where(frozen, param, param - lr.to(param.dtype) * update))


def scaled_update_(
    param: Tensor, mom: Tensor, rms: Tensor, shift: Tensor, factors: tuple[Tensor, Tensor, Tensor | None],
    new_d: Tensor, size: Tensor, eps: float, lr: Tensor, weight_decay: Tensor, frozen: Tensor,
    orthogonal: bool = False,
) -> None:
    """One tensor's update for :class:`~l2o.stepsize_rule.StepSizeGraphRule`, written into ``param``
    (and its step into ``shift``) in place.

    Args:
        param: ``[R, C]``, a view of the parameter.
        mom: ``[R, C]``, after :func:`adaptive_stats_`.
        rms: ``[R, C]``, after :func:`adaptive_stats_`.
        shift: ``[R, C]`` ``x0 - x``, advanced in place by the step applied, ``lr * update``.
        factors: ``(rows [R, 1], cols [1, C], full [R, C] or None)`` from
            :meth:`~l2o.stepsize_rule.StepSizeGraphRule.scale_factors`.
        new_d: 0-d, the estimate after this step.
        size: 0-d, ``d c_k``: Prodigy's step size.
        eps: added to ``sqrt(v)`` (times ``new_d``).
        lr: 0-d learning rate.
        weight_decay: 0-d decoupled weight decay.
        frozen: 0-d bool: the parameter is left as it is.
        orthogonal: move along :func:`l2o.orthogonal.orthogonal_direction` (the caller decides
            which tensors: the rule's ``orthogonal`` and :func:`l2o.orthogonal.is_orthogonalized`).
    """
    rows, cols, full = factors
    factor = rows * cols if full is None else rows * cols * full
    base = mom / (torch.sqrt(rms.clamp(min=1e-30)) + new_d.to(mom.dtype) * eps)
    if orthogonal:
        base = orthogonal_direction(mom, base)
    update = size.to(mom.dtype) * factor.to(mom.dtype) * base
    shift.add_(moved_by(lr, frozen).to(mom.dtype) * update)
    update = update.to(param.dtype) + weight_decay.to(param.dtype) * param
    param.copy_(torch.where(frozen, param, param - lr.to(param.dtype) * update))


def prodigy_pass_(
    views: Sequence[tuple[Tensor, ...]], sites: Sequence[Sequence[tuple[str, Tensor, int]]], d: Tensor,
    numerator: Tensor, correction: Tensor, pool_sizes: Tensor, d0: float, betas: tuple[float, float, float], eps: float,
    dtype: torch.dtype,
) -> tuple[list[Tensor | None], Tensor, Tensor, Tensor]:
    """The first pass over every tensor of the model: :func:`adaptive_stats_` on each, their
    features pooled per neuron, and Prodigy's new ``d``. One function for the whole model, so that
    compiled it is one call (and one guard check) per step, not one per tensor.

    Args:
        views: per tensor ``(param, grad, mom, rms, grad_sum, shift)``, ``[R, C]`` views; the
            statistics advance in place.
        sites: per tensor, :func:`l2o.fused.pool_sites` as ``(along, ids, block)`` (empty for an
            empty tensor).
        d: 0-d, the estimate before this step.
        numerator: 0-d, Prodigy's ``r`` before this step.
        correction: 0-d, ``c_k``.
        pool_sizes: ``[N, 3]`` elements pooled into each neuron, at least 1
            (:attr:`~l2o.graph_rule.GraphContext.pool_sizes`).
        d0: Prodigy's initial estimate.
        betas: ``(b1, b2, sqrt(b2))``.
        eps: added to ``sqrt(v)`` (times ``d``) in the features.
        dtype: the rule's dtype (features are pooled in it).

    Returns ``(scales, pooled [N, 3 F], numerator, new_d)``: each tensor's feature scales (``None``
    for an empty one), the neurons' mean features, the new ``r`` and the new ``d``.
    """
    weight = d / d0 * d
    n_feat = len(D.FEATURE_NAMES)
    pooled = torch.zeros(pool_sizes.shape[0], 3 * n_feat, dtype=dtype, device=pool_sizes.device)
    dot, l1 = d.new_zeros(()), d.new_zeros(())
    scales: list[Tensor | None] = []
    for view, pools in zip(views, sites):
        if view[0].numel() == 0:
            scales.append(None)
            continue
        tensor_dot, tensor_l1, tensor_scales, sums = adaptive_stats_(*view, d, weight, betas, eps,
                                                                     tuple(a for a, _, _ in pools), dtype)
        dot, l1 = dot + tensor_dot.to(d.dtype), l1 + tensor_l1.to(d.dtype)
        scales.append(tensor_scales)
        for (_, ids, block), block_sums in zip(pools, sums):
            pooled[:, block * n_feat:(block + 1) * n_feat].index_add_(0, ids, block_sums)
    numerator = betas[2] * numerator + weight * correction * dot
    estimate = numerator / torch.where(l1 > 0, l1, torch.ones_like(l1))
    new_d = torch.where(l1 > 0, torch.maximum(d, estimate), d)
    return scales, pooled / pool_sizes.to(dtype).repeat_interleave(n_feat, 1), numerator, new_d


def scaled_updates_(
    views: Sequence[tuple[Tensor, ...]], terms: Sequence[Sequence[tuple[str, Tensor, int]]],
    log_scales: tuple[Tensor, Tensor], new_d: Tensor, size: Tensor, eps: float, lrs: Tensor, wds: Tensor,
    frozen: Tensor, orthogonal: Sequence[bool],
) -> None:
    """:func:`scaled_update_` on every tensor of the model, each with its factors from
    :func:`l2o.stepsize_rule.factors_from_terms` (``terms``: per tensor,
    :meth:`~l2o.stepsize_rule.StepSizeGraphRule.scale_terms`); ``lrs``, ``wds``, ``frozen``:
    ``[T]`` per tensor; ``orthogonal``: per tensor, whether it moves along the orthogonalized
    direction. One function for the whole model, as :func:`prodigy_pass_`."""
    from l2o.stepsize_rule import factors_from_terms

    for i, ((param, _, mom, rms, _, shift), tensor_terms) in enumerate(zip(views, terms)):
        if param.numel():
            factors = factors_from_terms(tensor_terms, *param.shape, log_scales)
            scaled_update_(param, mom, rms, shift, factors, new_d, size, eps, lrs[i], wds[i], frozen[i],
                           orthogonal[i])


class _FusedProdigyStep(FusedStepBase):
    """What the fused steps of the Prodigy-based rules share: the first pass over the model
    (:func:`prodigy_pass_`, compiled as one function). Subclasses write the second."""

    def __init__(self, rule: AdaptiveGraphRule | StepSizeGraphRule, context: GraphContext, compiled: bool = True
                 ) -> None:
        super().__init__(rule, context, compiled)
        self._pass = compile_static(prodigy_pass_) if compiled else prodigy_pass_
        self._sites = [[(along, m.ids.reshape(-1), block) for along, m, block in pool_sites(context, i)]
                       for i in range(len(context.source))]

    def _prodigy_pass(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: dict[str, Any]) -> dict[str, Any]:
        """Advance every tensor's statistics in place and return what the second pass reads:
        ``views`` (per tensor ``(param, grad, mom, rms, grad_sum, shift)``, ``[R, C]`` views),
        ``scales`` (per tensor, :func:`adaptive_stats_`'s feature scales), ``pooled [N, 3 F]``,
        ``time [11]``, ``d``, ``new_d``, ``size`` (``d c_k``) and the new ``state``."""
        rule, context = self.rule, self._checked_context(params)
        b1, b2 = rule.betas
        d = state["d"]
        views = []
        for p, g, *stats in zip(params, grads, state["mom"], state["rms"], state["grad_sum"], state["shift"]):
            shape = F.matrix_shape(p.shape)
            views.append((p.view(shape), g.reshape(shape), *(s.view(shape) for s in stats)))
        sites = [sites if view[0].numel() else [] for view, sites in zip(views, self._sites)]
        correction = D.bias_correction(state["step"], rule.betas, d)
        scales, pooled, numerator, new_d = self._pass(views, sites, d, state["numerator"], correction,
                                                      context.pool_sizes, rule.d0, (b1, b2, math.sqrt(b2)), rule.eps,
                                                      rule.node_in.weight.dtype)
        step = state["step"] + 1
        return {"views": views, "scales": scales, "pooled": pooled, "time": F.time_features(step, rule.node_in.weight),
                "d": d, "new_d": new_d, "size": d * correction,
                "state": dict(state, step=step, d=new_d, numerator=numerator)}


class FusedAdaptiveStep(_FusedProdigyStep):
    """The fused step of one :class:`~l2o.adaptive_rule.AdaptiveGraphRule` on one context; called
    like :class:`l2o.fused.FusedStepBase` (which supplies compilation and the calling convention)."""

    def __init__(self, rule: AdaptiveGraphRule, context: GraphContext, compiled: bool = True) -> None:
        super().__init__(rule, context, compiled)
        self._update = Specialized(adaptive_update_, compiled)

    def _step(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: dict[str, Any],
              lr: Sequence[float | Tensor], weight_decay: Sequence[float | Tensor],
              frozen: Sequence[bool]) -> dict[str, Any]:
        rule, context = self.rule, self.context
        found = self._prodigy_pass(params, grads, state)
        at_source, at_target, time_bias = self._context(rule, context, found["pooled"], found["time"])
        head = (rule.head_in.weight, rule.head_out.weight, rule.head_out.bias)
        lrs, wds, frozen_t = self._group_tensors(lr, weight_decay, frozen)
        for i, view in enumerate(found["views"]):
            if view[0].numel() == 0:
                continue
            maps = ((context.source[i], at_source), (context.target[i], at_target), (context.kind[i], rule.kind.weight))
            tables = head_tables(maps, time_bias, *view[0].shape)
            self._update(i, *view, found["scales"][i], tables, head, found["d"], found["new_d"], found["size"],
                         (rule.eps, rule.exp_mult), lrs[i], wds[i], frozen_t[i])
        return found["state"]


class FusedStepSizeStep(_FusedProdigyStep):
    """The fused step of one :class:`~l2o.stepsize_rule.StepSizeGraphRule` on one context: the
    first pass as :class:`FusedAdaptiveStep`'s, the rule's :meth:`log_scales` on ``O(neurons)``
    data, then :func:`scaled_update_` per tensor. For a rule with
    :meth:`~l2o.stepsize_rule.StepSizeGraphRule.constant_neurons` the first pass pools nothing and
    the GNN is skipped (tested against the reference step, which always runs it)."""

    neuron_method = "log_scales"

    def __init__(self, rule: StepSizeGraphRule, context: GraphContext, compiled: bool = True) -> None:
        super().__init__(rule, context, compiled)
        self._update = compile_static(scaled_updates_) if compiled else scaled_updates_
        self._terms = [rule.scale_terms(context, i) for i in range(len(context.source))]
        self._orthogonal: tuple[bool, ...] | None = None  # per tensor: rule.orthogonalized at the first step
        # the rule's meta-parameters are fixed while it optimizes, so this holds for the step's life
        self._constant = rule.constant_neurons()
        if self._constant:  # nothing to pool: the GNN that reads the pools is skipped
            self._sites = [[] for _ in self._sites]

    def _step(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: dict[str, Any],
              lr: Sequence[float | Tensor], weight_decay: Sequence[float | Tensor],
              frozen: Sequence[bool]) -> dict[str, Any]:
        rule, context = self.rule, self.context
        found = self._prodigy_pass(params, grads, state)
        if self._constant:
            log_scales = rule.log_scales(context, None, found["time"])
        else:
            log_scales = self._context(rule, context, found["pooled"], found["time"])
        if self._orthogonal is None:
            self._orthogonal = tuple(rule.orthogonalized(params, context)) or (False,) * len(params)
        self._update(found["views"], self._terms, log_scales, found["new_d"], found["size"], rule.eps,
                     *self._group_tensors(lr, weight_decay, frozen), self._orthogonal)
        return found["state"]
