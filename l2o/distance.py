"""Prodigy's statistics and step-size estimate, as pure functions over lists of tensors.

Prodigy (Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner", ICML
2024) runs Adam with a step size ``d`` that it estimates on the fly: how far the parameters have
to travel from their initial values, measured through the correlation of the gradients with the
distance already travelled. The estimate only grows. With ``k`` the step counter, ``x0`` the
initial parameters, ``b3 = sqrt(b2)`` and ``c_k = sqrt(1 - b2^(k+1)) / (1 - b1^(k+1))``::

    r_k = b3 r_(k-1) + (d_k / d0) d_k c_k <g_k, x0 - x_k>      (one number for the whole model)
    s_k = b3 s_(k-1) + (d_k / d0) d_k g_k                      (per element)
    m_k = b1 m_(k-1) + (1 - b1) d_k g_k,   v_k = b2 v_(k-1) + (1 - b2) d_k^2 g_k^2
    d_(k+1) = max(d_k, r_k / ||s_k||_1)
    x_(k+1) = x_k - d_k c_k m_k / (sqrt(v_k) + d_(k+1) eps)

This is the reference ``prodigyopt`` package's update with ``safeguard_warmup=True`` and
``use_bias_correction=True`` (without them its test losses were worse on our evaluation tasks),
``d_coef = 1`` and no growth limit. The sums run over all parameters: one ``d`` for the model. A
``d`` per tensor, tried on the ``benchmarks/l2o_quality.py`` tasks, trained worse on 3 of 4.

One departure: ``x0 - x_k`` is not read off the parameters but accumulated as ``shift``, the sum
of the steps the optimizer applied, ``lr * update`` (:func:`moved`; a frozen parameter adds
nothing, weight decay is left out). Without weight decay the two are equal. Why accumulate: a
bfloat16 parameter does not move by Prodigy's first updates (about ``d0 = 1e-6``, below its
rounding), so ``x0 - x`` would stay 0 and ``d`` would never grow. Why ``lr`` counts, as in
``prodigyopt``: accumulating the rule's update alone made ``d`` undo a smaller ``lr`` (on the
3-hidden-layer ReLU MLP of ``benchmarks/l2o_quality.py``, ``lr = 0.3`` grew ``d`` to 3.3x its
``lr = 1`` value, the same effective step), so ``lr`` and warm-up barely acted. The rule cannot see
``lr``: :func:`l2o.functional.learned_step` and the fused steps record the move; a rule's own
``forward`` leaves ``shift`` as it was.

**State** (:func:`init_stats`): ``step`` (int64), ``d`` and ``numerator`` (``r``) as 0-d tensors,
and per parameter ``mom`` (``m``), ``rms`` (``v``), ``grad_sum`` (``s``) and ``shift`` (``x0 - x``),
each shaped like the parameter, in float32 (float64 for float64 parameters): 16 bytes per element.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from l2o.features import matrix_shape

__all__ = [
    "DEFAULT_D0",
    "FEATURE_NAMES",
    "ProdigyStatistics",
    "bias_correction",
    "checked_betas",
    "direction",
    "features",
    "init_stats",
    "moved",
    "update_stats",
]

DEFAULT_D0 = 1e-6
"""Prodigy's initial estimate of ``d``; it grows from there within the first tens of steps."""

FEATURE_NAMES: tuple[str, ...] = ("g", "p", "m", "s", "x0-x", "m/sqrt(v)", "d*g/sqrt(v)")
"""The per-element features of :func:`features`: the first 5 are divided by their root mean
square over the tensor, the last two are scale-free already."""
_N_SCALED = 5
_NORM_EPS = 1e-30


def _stat_dtype(param: Tensor) -> torch.dtype:
    return torch.promote_types(param.dtype, torch.float32)


def init_stats(params: Sequence[Tensor], d0: float = DEFAULT_D0) -> dict[str, Any]:
    """Fresh statistics for ``params``: zero moments and shifts, ``d = d0``. Shared entries live on
    the first parameter's device (CPU if there is none)."""
    device = params[0].device if len(params) else torch.device("cpu")
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    return {
        "step": torch.zeros((), dtype=torch.int64, device=device),
        "d": torch.tensor(d0, dtype=dtype, device=device),
        "numerator": torch.zeros((), dtype=dtype, device=device),
        "mom": [torch.zeros(p.shape, dtype=_stat_dtype(p), device=p.device) for p in params],
        "rms": [torch.zeros(p.shape, dtype=_stat_dtype(p), device=p.device) for p in params],
        "grad_sum": [torch.zeros(p.shape, dtype=_stat_dtype(p), device=p.device) for p in params],
        "shift": [torch.zeros(p.shape, dtype=_stat_dtype(p), device=p.device) for p in params],
    }


def checked_betas(betas: Sequence[float], d0: float) -> tuple[float, float]:
    """``betas`` as two floats, after checking them and ``d0``: a clear error for decays outside
    [0, 1) or a non-positive initial estimate (shared by the rules built on these statistics)."""
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two decays in [0, 1), got {list(betas)}")
    if d0 <= 0:
        raise ValueError(f"d0 must be positive, got {d0}")
    return float(betas[0]), float(betas[1])


class ProdigyStatistics:
    """Mixin of the rules built on these statistics: their Prodigy settings and their state.

    Call :meth:`_set_prodigy` in the constructor; :meth:`init_state` is :func:`init_stats` with the
    rule's ``d0``. Put it before the rule's base class, so that its ``init_state`` wins."""

    betas: tuple[float, float]
    d0: float
    eps: float

    def _set_prodigy(self, betas: Sequence[float], d0: float, eps: float) -> dict[str, Any]:
        """Check and store ``betas``, ``d0`` and ``eps``; return them as config entries."""
        self.betas, self.d0, self.eps = checked_betas(betas, d0), d0, eps
        return {"betas": list(self.betas), "d0": d0, "eps": eps}

    def init_state(self, params: Sequence[Tensor]) -> dict[str, Any]:
        """Prodigy's statistics, see :func:`init_stats`."""
        return init_stats(params, self.d0)


def bias_correction(step: Tensor, betas: tuple[float, float], like: Tensor) -> Tensor:
    """``c_k = sqrt(1 - b2^(k+1)) / (1 - b1^(k+1))`` for ``step = k`` (0-d, dtype of ``like``)."""
    k = step.to(device=like.device, dtype=torch.float64) + 1
    b1, b2 = betas
    return (torch.sqrt(1 - b2**k) / (1 - b1**k)).to(like.dtype)


def update_stats(
    grads: Sequence[Tensor],
    state: dict[str, Any],
    betas: tuple[float, float] = (0.9, 0.999),
    d0: float = DEFAULT_D0,
) -> dict[str, Any]:
    """One step of the statistics and of ``d`` (see the module docstring); pure and differentiable.
    ``shift`` is left as it is: the caller records the step it applies (:func:`moved`).

    Returns a new state (``step + 1``, the new ``d``); ``state`` is not modified.
    """
    b1, b2 = betas
    b3 = math.sqrt(b2)
    d = state["d"]
    weight = d / d0 * d  # (d_k / d0) d_k
    numerator = b3 * state["numerator"] + weight * bias_correction(state["step"], betas, d) * sum(
        (torch.sum(g.to(shift.dtype) * shift).to(d.dtype) for g, shift in zip(grads, state["shift"])), d.new_zeros(()))
    mom, rms, grad_sum = [], [], []
    for g, m, v, s in zip(grads, state["mom"], state["rms"], state["grad_sum"]):
        g = g.to(m.dtype)
        dk = d.to(m.dtype)
        mom.append(b1 * m + (1 - b1) * dk * g)
        rms.append(b2 * v + (1 - b2) * (dk * dk) * (g * g))
        grad_sum.append(b3 * s + weight.to(m.dtype) * g)
    denominator = sum((s.abs().sum().to(d.dtype) for s in grad_sum), d.new_zeros(()))
    estimate = numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    new_d = torch.where(denominator > 0, torch.maximum(d, estimate), d)
    return {**state, "step": state["step"] + 1, "d": new_d, "numerator": numerator, "mom": mom, "rms": rms,
            "grad_sum": grad_sum}


def moved(shift: Sequence[Tensor], updates: Sequence[Tensor], lrs: Sequence[float | Tensor]) -> list[Tensor]:
    """``shift`` after the optimizer applies ``x <- x - lr * update``: ``shift + lr * update`` per
    parameter (``update`` as the rule returned it, in the statistics' dtype); pure and
    differentiable."""
    return [s + lr * u.to(s.dtype) for s, u, lr in zip(shift, updates, lrs)]


def direction(mom: Tensor, rms: Tensor, d: Tensor, eps: float = 1e-8) -> Tensor:
    """Prodigy's direction ``m / (sqrt(v) + d eps)`` (``d``: the new estimate), shaped like ``mom``.
    ``v`` is clamped at 1e-30 before the square root, whose derivative at 0 is infinite (it would
    turn meta-gradients into NaN); where ``v`` is that small, ``m`` is 0."""
    return mom / (torch.sqrt(rms.clamp(min=1e-30)) + d.to(rms.dtype) * eps)


def features(param: Tensor, grad: Tensor, state: dict[str, Any], index: int, d: Tensor, eps: float = 1e-8) -> Tensor:
    """The :data:`FEATURE_NAMES` features of parameter ``index`` after :func:`update_stats`:
    ``[7, R, C]`` over its matrix view ``R = S[0]``, ``C = prod(S[1:])``. ``d`` is the step's
    estimate *before* the update: the features can then be pooled in the same pass over the
    parameters that advances the statistics, before the new ``d`` (a sum over all of them) exists."""
    shape = matrix_shape(param.shape)
    mom, rms = state["mom"][index], state["rms"][index]
    p, g = param.to(mom.dtype), grad.to(mom.dtype)
    denominator = torch.sqrt(rms.clamp(min=1e-30)) + d.to(rms.dtype) * eps
    scaled = torch.stack([g, p, mom, state["grad_sum"][index], state["shift"][index]]).reshape(_N_SCALED, *shape)
    n = max(scaled[0].numel(), 1)
    scaled = scaled * scaled.square().sum((1, 2), keepdim=True).div(n).add(_NORM_EPS).rsqrt()
    ratios = torch.stack([mom / denominator, d.to(rms.dtype) * g / denominator]).reshape(2, *shape)
    return torch.cat([scaled, ratios])
