"""Optimizer statistics -> per-element features (the small_fc_lopt / AdafacLO set).

Pure functions over lists of tensors: nothing is modified in place, everything is differentiable
and works under ``torch.func`` (``functional_call``, ``grad``, ``vmap``).

**Statistics** (one entry per parameter tensor of shape ``S``, viewed as a matrix ``[R, C]``):

* ``mom``  ``[3, *S]`` — momenta (EMA of g) at the 3 momentum decays,
* ``rms``  ``[*S]`` — second moment (EMA of g²) at the rms decay,
* ``row``  ``[3, R]`` and ``col`` ``[3, C]`` — Adafactor's factored second moments (EMAs of the
  row and column means of g² + 1e-30) at the 3 factored decays,
* plus one shared ``step`` counter (int64 scalar): the number of :func:`update_stats` calls.

The matrix view is ``R = S[0]``, ``C = prod(S[1:])``: a conv weight ``[out, in, *k]`` is the matrix
``[out, in * prod(k)]`` (rows = output channels, columns = (input channel, kernel position)), a
vector ``[n]`` is ``[n, 1]`` and a scalar ``[1, 1]``. For vectors the factored estimate is exact.

Statistics are kept in ``float32`` (``float64`` for ``float64`` parameters) whatever the
parameter dtype. State bytes per element: 16 (3 momenta + 1 second moment) plus ``12 (R + C)`` per
tensor for matrices and convs; vectors and scalars pay 28 (their ``row`` is as long as they are).

**Features** (:data:`NUM_FEATURES` = 39 per element, names in :data:`FEATURE_NAMES`): 28 statistic
features, each divided by its root mean square over the tensor, then 11 time features
``tanh(t / tau - 1)``:

====  ==========================  ===================================================
 #    name                        value (``v̂ = row·col / mean(row)``, Adafactor's estimate of g²)
====  ==========================  ===================================================
 0    g                           gradient
 1    p                           parameter
 2-4  m_k                         momenta
 5    v                           second moment
 6-8  m_k/sqrt(v)                 ``m_k * rsqrt(v + EPS)``
 9    rsqrt(v)                    ``rsqrt(v + EPS)``
10-12 g/sqrt(v̂_k + EPS)           Adafactor-normalised gradient
13-15 row_k                       row accumulators, broadcast over the row
16-18 col_k                       column accumulators, broadcast over the column
19-21 rsqrt(row_k)                ``rsqrt(row_k + EPS)``
22-24 rsqrt(col_k)                ``rsqrt(col_k + EPS)``
25-27 m_k/sqrt(v̂_k)               factored momenta
28-38 tanh(t/tau - 1)             ``tau`` in :data:`TIMESCALES`, t = step counter
====  ==========================  ===================================================

**Memory**: :func:`feature_chunks` works on row blocks of about ``chunk_size`` elements, so the
feature matrices a rule sees are ``[<= chunk_size, 39]`` whatever the tensor size; the
normalisers then need two passes (sums of squares first). :func:`update_stats` allocates the new
statistics (16 B/element) plus one g² temporary (4 B/element); EMAs use ``torch.lerp``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_DECAYS",
    "EPS",
    "FEATURE_NAMES",
    "NUM_FEATURES",
    "NUM_STAT_FEATURES",
    "NUM_TIME_FEATURES",
    "TIMESCALES",
    "Decays",
    "TensorStats",
    "adam_corrections",
    "adam_direction",
    "element_features",
    "feature_chunks",
    "init_stats",
    "matrix_shape",
    "tensor_stats",
    "time_features",
    "update_stats",
    "COMPACT_FEATURE_NAMES",
    "compact_features",
    "compact_scales",
    "direction_magnitude_update",
]

EPS = 1e-16
"""Added to second moments before ``rsqrt`` (so ``rsqrt <= 1e8``)."""
_FACTORED_EPS = 1e-30  # Adafactor's eps1, added to g² before the row/column means
_NORM_EPS = 1e-30  # added to the mean square of a feature before normalising by it

TIMESCALES: tuple[float, ...] = (1, 3, 10, 30, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5)
"""Time scales ``tau`` of the time features ``tanh(t / tau - 1)``."""

_K = ("0", "1", "2")
FEATURE_NAMES: tuple[str, ...] = (
    ("g", "p")
    + tuple(f"m{k}" for k in _K)
    + ("v",)
    + tuple(f"m{k}/sqrt(v)" for k in _K)
    + ("rsqrt(v)",)
    + tuple(f"g/sqrt(vhat{k})" for k in _K)
    + tuple(f"row{k}" for k in _K)
    + tuple(f"col{k}" for k in _K)
    + tuple(f"rsqrt(row{k})" for k in _K)
    + tuple(f"rsqrt(col{k})" for k in _K)
    + tuple(f"m{k}/sqrt(vhat{k})" for k in _K)
    + tuple(f"tanh(t/{tau:g}-1)" for tau in TIMESCALES)
)
"""Name of each feature column, in order."""
NUM_TIME_FEATURES = len(TIMESCALES)
NUM_FEATURES = len(FEATURE_NAMES)
NUM_STAT_FEATURES = NUM_FEATURES - NUM_TIME_FEATURES


class Decays(NamedTuple):
    """EMA decays ``beta`` of the statistics (floats, or tensors to meta-learn them).

    ``momentum``: 3 decays of the momenta; ``rms``: decay of the second moment; ``factored``: 3
    decays of the factored accumulators. Tensors have shapes ``[3]``, ``[]`` and ``[3]``.
    """

    momentum: Sequence[float] | Tensor = (0.9, 0.99, 0.999)
    rms: float | Tensor = 0.999
    factored: Sequence[float] | Tensor = (0.9, 0.99, 0.999)


DEFAULT_DECAYS = Decays()


class TensorStats(NamedTuple):
    """The statistics of one parameter tensor of shape ``S`` (matrix view ``[R, C]``).

    ``mom [3, *S]``, ``rms [*S]``, ``row [3, R]``, ``col [3, C]``, all float32 (float64 for
    float64 parameters).
    """

    mom: Tensor
    rms: Tensor
    row: Tensor
    col: Tensor


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The ``(rows, cols)`` matrix view of a parameter shape: ``(S[0], prod(S[1:]))``.

    Scalars are ``(1, 1)`` and vectors ``(n, 1)``.
    """
    if len(shape) == 0:
        return 1, 1
    return int(shape[0]), math.prod(shape[1:])


def _stat_dtype(param: Tensor) -> torch.dtype:
    return torch.promote_types(param.dtype, torch.float32)


def init_stats(params: Sequence[Tensor]) -> dict[str, Any]:
    """Zero statistics for ``params``.

    Returns ``{"step": int64 [], "mom": [[3, *S_i]], "rms": [[*S_i]], "row": [[3, R_i]],
    "col": [[3, C_i]]}``; the lists have one entry per parameter. ``step`` lives on the device of
    the first parameter (CPU if there is none).
    """
    device = params[0].device if len(params) else torch.device("cpu")
    state: dict[str, Any] = {"step": torch.zeros((), dtype=torch.int64, device=device)}
    state["mom"] = [torch.zeros((3, *p.shape), dtype=_stat_dtype(p), device=p.device) for p in params]
    state["rms"] = [torch.zeros(p.shape, dtype=_stat_dtype(p), device=p.device) for p in params]
    shapes = [matrix_shape(p.shape) for p in params]
    state["row"] = [torch.zeros(3, r, dtype=_stat_dtype(p), device=p.device) for p, (r, _) in zip(params, shapes)]
    state["col"] = [torch.zeros(3, c, dtype=_stat_dtype(p), device=p.device) for p, (_, c) in zip(params, shapes)]
    return state


def tensor_stats(state: dict[str, Any], index: int) -> TensorStats:
    """The statistics of parameter ``index`` in a state from :func:`init_stats`."""
    return TensorStats(state["mom"][index], state["rms"][index], state["row"][index], state["col"][index])


def _rates(decays: float | Sequence[float] | Tensor, like: Tensor) -> Tensor:
    """``1 - decays`` as a 1-D tensor with the dtype and device of ``like``.

    Float decays are subtracted in double precision first (``1 - 0.999`` exactly, as in Adam).
    """
    if isinstance(decays, Tensor):
        rates = 1 - decays.to(dtype=like.dtype, device=like.device)
    else:
        rates = 1 - torch.tensor(decays, dtype=torch.float64)
    return rates.to(dtype=like.dtype, device=like.device).reshape(-1)


def update_stats(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    state: dict[str, Any],
    decays: Decays = DEFAULT_DECAYS,
    inplace: bool = False,
) -> dict[str, Any]:
    """Advance the statistics by one step with ``grads`` (one per parameter, same shapes).

    ``params`` only fix the matrix view. Returns a new state (same structure as ``state``, step
    + 1); ``state`` is not modified. Extra keys of ``state`` are carried over unchanged. With
    ``inplace`` (no autograd; for ``NeuralGraphOpt.step``) the statistic tensors of ``state`` are
    advanced in place and reused, bit-identical to the pure version, which saves their 16 B/element.
    """
    if not (len(params) == len(grads) == len(state["mom"])):
        raise ValueError(f"got {len(params)} parameters, {len(grads)} gradients and statistics for {len(state['mom'])}")
    new = dict(state, step=state["step"] + 1, mom=[], rms=[], row=[], col=[])
    rates: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor, Tensor]] = {}
    lerp = torch.Tensor.lerp_ if inplace else torch.lerp
    for i, (p, g) in enumerate(zip(params, grads)):
        old = tensor_stats(state, i)
        g32 = g.to(old.rms.dtype)
        key = (g32.dtype, g32.device)
        if key not in rates:
            rates[key] = tuple(_rates(d, g32) for d in decays)
        mom_rate, rms_rate, fac_rate = rates[key]
        g_sq = g32 * g32
        new["mom"].append(lerp(old.mom, g32.unsqueeze(0), mom_rate.reshape(3, *([1] * g.ndim))))
        new["rms"].append(lerp(old.rms, g_sq, rms_rate.reshape(())))
        n_rows, n_cols = matrix_shape(p.shape)
        g_sq = g_sq.reshape(n_rows, n_cols)
        row_mean = g_sq.sum(dim=1) / max(n_cols, 1) + _FACTORED_EPS  # sum / n: no NaN for empty tensors
        col_mean = g_sq.sum(dim=0) / max(n_rows, 1) + _FACTORED_EPS
        fac_rate = fac_rate.reshape(3, 1)
        new["row"].append(lerp(old.row, row_mean.unsqueeze(0), fac_rate))
        new["col"].append(lerp(old.col, col_mean.unsqueeze(0), fac_rate))
    return new


def time_features(step: Tensor, like: Tensor) -> Tensor:
    """``tanh(t / tau - 1)`` for every ``tau`` in :data:`TIMESCALES`: ``[NUM_TIME_FEATURES]``."""
    taus = torch.tensor(TIMESCALES, dtype=like.dtype, device=like.device)
    return torch.tanh(step.to(device=like.device, dtype=like.dtype) / taus - 1)


def _raw_features(param: Tensor, grad: Tensor, stats: TensorStats, row_mean: Tensor, rows: slice) -> Tensor:
    """The 28 unnormalised statistic features of matrix rows ``rows``: ``[28, n_rows * C]``."""
    shape = matrix_shape(param.shape)
    dtype = stats.rms.dtype
    g = grad.reshape(shape)[rows].to(dtype)
    p = param.reshape(shape)[rows].to(dtype)
    m = stats.mom.reshape(3, *shape)[:, rows]
    v = stats.rms.reshape(shape)[rows]
    r = stats.row[:, rows, None]  # [3, n, 1]
    c = stats.col[:, None, :]  # [3, 1, C]
    rsqrt_v = torch.rsqrt(v + EPS)
    rsqrt_vhat = torch.rsqrt(r * c / row_mean + EPS)  # [3, n, C]; + EPS keeps it and its derivative finite
    full = m.shape
    parts = [
        g[None],
        p[None],
        m,
        v[None],
        m * rsqrt_v,
        rsqrt_v[None],
        g * rsqrt_vhat,
        r.expand(full),
        c.expand(full),
        torch.rsqrt(r + EPS).expand(full),
        torch.rsqrt(c + EPS).expand(full),
        m * rsqrt_vhat,
    ]
    return torch.cat(parts).reshape(NUM_STAT_FEATURES, -1)


def feature_chunks(
    param: Tensor, grad: Tensor, stats: TensorStats, step: Tensor, chunk_size: int = 2**16
) -> Iterator[tuple[int, int, Tensor]]:
    """Normalised features of one tensor, in blocks of whole matrix rows.

    Args:
        param: one parameter, shape ``S``.
        grad: its gradient, shape ``S``.
        stats: its statistics *after* :func:`update_stats` (see :func:`tensor_stats`).
        step: the state's step counter (int64 scalar).
        chunk_size: about this many elements per block (at least one matrix row).

    Yields:
        ``(start, stop, features)``: ``features [stop - start, NUM_FEATURES]`` for the flat
        elements ``param.reshape(-1)[start:stop]``, stored feature-major (the transpose of a
        contiguous ``[NUM_FEATURES, n]`` block, which matmuls read without a copy). Blocks cover
        the tensor in order. With more than one block the statistic features are computed twice
        (sums of squares, then values).
    """
    n_rows, n_cols = matrix_shape(param.shape)
    numel = n_rows * n_cols
    if numel == 0:
        return
    rows_per_chunk = max(1, chunk_size // n_cols)
    blocks = [slice(r, min(r + rows_per_chunk, n_rows)) for r in range(0, n_rows, rows_per_chunk)]
    row_mean = stats.row.mean(dim=1)[:, None, None]  # [3, 1, 1]
    time = time_features(step, stats.rms)
    if len(blocks) == 1:
        raw = _raw_features(param, grad, stats, row_mean, blocks[0])
        cached = [raw]
        sum_sq = torch.linalg.vector_norm(raw, dim=1).square()
    else:
        cached = []
        sum_sq = sum(
            torch.linalg.vector_norm(_raw_features(param, grad, stats, row_mean, b), dim=1).square() for b in blocks
        )
    scale = torch.rsqrt(sum_sq / numel + _NORM_EPS)[:, None]
    for b in blocks:
        raw = cached.pop() if cached else _raw_features(param, grad, stats, row_mean, b)
        time_block = time[:, None].expand(NUM_TIME_FEATURES, raw.shape[1])
        yield b.start * n_cols, b.stop * n_cols, torch.cat([raw * scale, time_block]).T


def element_features(
    params: Sequence[Tensor], grads: Sequence[Tensor], state: dict[str, Any], chunk_size: int = 2**16
) -> list[Tensor]:
    """Features of every element: one ``[numel_i, NUM_FEATURES]`` tensor per parameter.

    ``state`` is the state after :func:`update_stats`. This materialises ``156 B`` per element;
    rules that care about memory iterate :func:`feature_chunks` instead.
    """
    out = []
    for i, (p, g) in enumerate(zip(params, grads)):
        chunks = [f for _, _, f in feature_chunks(p, g, tensor_stats(state, i), state["step"], chunk_size)]
        dtype = state["rms"][i].dtype
        out.append(torch.cat(chunks) if chunks else p.new_zeros((0, NUM_FEATURES), dtype=dtype))
    return out


def adam_corrections(step: Tensor, decays: Decays, like: Tensor) -> tuple[Tensor, Tensor]:
    """Adam's bias corrections ``(1 - beta1**t, sqrt(1 - beta2**t))`` (0-d, dtype/device of ``like``)."""
    t = step.to(like.dtype)
    rate1, rate2 = _rates(decays.momentum, like)[0], _rates(decays.rms, like)[0]
    correction1 = -torch.expm1(t * torch.log1p(-rate1))  # 1 - beta1**t, accurate for beta near 1
    return correction1, torch.sqrt(-torch.expm1(t * torch.log1p(-rate2)))


def adam_direction(
    mom: Tensor,
    rms: Tensor,
    step: Tensor,
    decays: Decays = DEFAULT_DECAYS,
    eps: float = 1e-8,
    inplace: bool = False,
    corrections: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Adam's bias-corrected direction ``m̂ / (sqrt(v̂) + eps)`` from the first momentum.

    Args:
        mom: first momentum (decay ``decays.momentum[0]``), any shape.
        rms: second moment (decay ``decays.rms``), the same shape.
        step: number of statistic updates so far (>= 1).
        inplace: reuse the temporaries (no autograd); the same bits, two allocations instead of six.
        corrections: :func:`adam_corrections` of this step, when the caller computes them once.

    Returns a new tensor shaped like ``mom``; with the same decays this is the direction of
    ``torch.optim.Adam(betas=(momentum[0], rms), eps=eps)`` (up to float rounding).
    """
    correction1, root_correction2 = corrections or adam_corrections(step, decays, mom)
    # clamp: sqrt has an infinite derivative at 0 (elements whose gradient is always 0), which would
    # turn meta-gradients into NaN; 1e-30 is far below eps, so the value is Adam's
    if inplace:
        denominator = rms.clamp(min=1e-30).sqrt_().div_(root_correction2).add_(eps)
        return torch.div(mom, correction1).div_(denominator)
    return (mom / correction1) / (torch.sqrt(rms.clamp(min=1e-30)) / root_correction2 + eps)


COMPACT_FEATURE_NAMES: tuple[str, ...] = (
    "g", "p", "m0", "m1", "m2", "m0/sqrt(v)", "m1/sqrt(v)", "m2/sqrt(v)", "g/sqrt(vhat0)",
)
"""The cheap per-element feature set of graph rules (the time features are per step, not per element)."""


def compact_scales(param: Tensor, grad: Tensor, stats: TensorStats) -> Tensor:
    """``[5]`` inverse root mean squares over the tensor of ``g``, ``p`` and the three momenta
    (the normalisers of :func:`compact_features`)."""
    n_rows, n_cols = matrix_shape(param.shape)
    dtype = stats.rms.dtype
    if n_rows * n_cols <= _NORM_BLOCK:
        norms = [torch.linalg.vector_norm(grad, dtype=dtype), torch.linalg.vector_norm(param, dtype=dtype),
                 *torch.linalg.vector_norm(stats.mom.reshape(3, -1), dim=1)]
        squares = torch.stack(norms).square()
    else:
        squares = torch.stack([_blocked_square_sum(x, dtype) for x in (grad, param, *stats.mom)])
    return squares.div(max(n_rows * n_cols, 1)).add(_NORM_EPS).rsqrt()


_NORM_BLOCK = 2**16


def _blocked_square_sum(x: Tensor, dtype: torch.dtype) -> Tensor:
    """The sum of squares of ``x`` (any shape) in ``dtype``, from blocks of :data:`_NORM_BLOCK`
    elements. Why blocks: torch's float32 norm of a tensor of millions of elements is off by about
    2e-4 relative (measured at 4M elements), the sum of block norms by rounding only."""
    blocks = x.reshape(-1).split(_NORM_BLOCK)
    return torch.stack([torch.linalg.vector_norm(b, dtype=dtype) for b in blocks]).square().sum()


def compact_features(
    param: Tensor,
    grad: Tensor,
    stats: TensorStats,
    chunk_size: int = 2**16,
    inplace: bool = False,
    scales: Tensor | None = None,
) -> Iterator[tuple[slice, Tensor]]:
    """A cheap feature set, in blocks of whole matrix rows: ``(rows, features [9, r, C])``.

    ``rows`` are the block's rows of the matrix view ``[R, C]`` (:func:`matrix_shape`); features
    are feature-major (contiguous), in the order of :data:`COMPACT_FEATURE_NAMES`.

    ``g``, ``p`` and the three momenta are divided by their root mean square over the tensor
    (:func:`compact_scales`, computed here unless ``scales`` are given); ``m_k / sqrt(v)`` and the
    Adafactor-normalised gradient are scale-free already; like ``rsqrt(v + EPS)``, the Adafactor
    estimate gets ``EPS`` added, so gradients that are zero up to rounding (e.g. an attention key
    bias) give features near 0 rather than ``sign(g)``. ``stats`` are the statistics after
    :func:`update_stats`. About a quarter of the work of :func:`feature_chunks`. ``inplace`` (no
    autograd) writes each block straight into its output buffer: the same bits, a third of the
    memory traffic.
    """
    n_rows, n_cols = matrix_shape(param.shape)
    if n_rows * n_cols == 0:
        return
    dtype = stats.rms.dtype
    rms = compact_scales(param, grad, stats) if scales is None else scales
    g_all, p_all = grad.reshape(n_rows, n_cols).to(dtype), param.reshape(n_rows, n_cols).to(dtype)
    m_all = stats.mom.reshape(3, n_rows, n_cols)
    row_mean = stats.row[0].mean()
    rows_per_chunk = max(1, chunk_size // n_cols)
    for r in range(0, n_rows, rows_per_chunk):
        rows = slice(r, min(r + rows_per_chunk, n_rows))
        g, p, m = g_all[rows], p_all[rows], m_all[:, rows]
        v = stats.rms.reshape(n_rows, n_cols)[rows]
        vhat = stats.row[0, rows, None] * stats.col[0, None, :]
        if inplace:
            rsqrt_v, rsqrt_vhat = torch.add(v, EPS).rsqrt_(), vhat.div_(row_mean).add_(EPS).rsqrt_()
        else:
            rsqrt_v, rsqrt_vhat = torch.rsqrt(v + EPS), torch.rsqrt(vhat / row_mean + EPS)
        factors = [(g, rms[0]), (p, rms[1]), (m[0], rms[2]), (m[1], rms[3]), (m[2], rms[4]),
                   (m[0], rsqrt_v), (m[1], rsqrt_v), (m[2], rsqrt_v), (g, rsqrt_vhat)]
        if inplace:
            feats = g.new_empty(len(factors), *g.shape)
            for k, (a, b) in enumerate(factors):
                torch.mul(a, b, out=feats[k])
        else:
            feats = torch.stack([a * b for a, b in factors])
        yield rows, feats


def direction_magnitude_update(
    d: Tensor,
    m: Tensor,
    adam: Tensor,
    step_mult: float,
    exp_mult: float,
    skip: float,
    inplace: bool = False,
    gated: bool = False,
) -> Tensor:
    """The learned step of Metz et al. with an Adam skip term, shared by every learned rule.

    ``d [n]`` and ``m [n]`` are the rule's direction and magnitude outputs; ``adam [n]`` is
    :func:`adam_direction`. Returns ``step_mult * (d + skip * adam) * exp(exp_mult * m)`` ``[n]``,
    or with ``gated`` ``step_mult * (skip + d) * adam * exp(exp_mult * m)`` (``d`` rescales Adam's
    direction, so elements without gradient never move). With ``d = m = 0`` (a zero-initialised
    last layer) both are ``step_mult * skip * adam``: Adam. ``inplace`` (no autograd) overwrites
    ``d``, ``m`` and ``adam`` and returns one of them; the same bits.
    """
    if gated:
        if inplace:
            return d.add_(skip).mul_(adam).mul_(step_mult).mul_(m.mul_(exp_mult).exp_())
        return step_mult * ((skip + d) * adam) * torch.exp(exp_mult * m)
    if inplace:
        return adam.mul_(skip).add_(d).mul_(step_mult).mul_(m.mul_(exp_mult).exp_())
    return step_mult * (d + skip * adam) * torch.exp(exp_mult * m)
