"""Fit many SIRENs at once: batched matmuls, hand-written gradients, Adam, optional torch.compile.

Every SIREN of a batch is a slice of stacked parameters (weights ``[B, out, in]``, biases
``[B, out]``); forward and backward are ``torch.bmm`` over the batch, so one call trains ``B``
independent networks on their own images, full-batch over all pixels. The loss of each SIREN is its
own mean squared error (the batch sums them), so a SIREN's result does not depend on which others
share its batch, and each SIREN is initialised from its own seed.

On CPU the fastest layout is one single-threaded process per core (:class:`SirenFitter` with
``workers``, see :mod:`encoders.zoo.parallel`), each fitting small batches: 8 SIRENs keep a
batch's activations in cache.

Conventions (DWSNets MNIST-INR zoo): pixel ``(row r, column c)`` of an ``H x W`` image sits at
coordinate ``(x, y) = (linspace(-1, 1, W)[c], linspace(-1, 1, H)[r])``, pixels in row-major order;
targets are intensities mapped to ``value_range``; PSNR is measured on the [0, 1] image scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import torch
from torch import Tensor

from encoders.zoo.parallel import WorkerPool
from encoders.zoo.siren import INITS, siren_init_, siren_param_shapes

__all__ = ["RECIPES", "InrConfig", "SirenFitter", "check_images", "coordinate_grid", "fit_sirens", "psnr",
           "render_sirens"]

_BETAS, _EPS = (0.9, 0.999), 1e-8
_CHECK_EVERY = 10  # steps between early-stopping checks


@dataclass(frozen=True)
class InrConfig:
    """What an INR zoo's SIRENs are and how they are fitted.

    Architecture and targets: ``hidden`` widths, sine frequency ``w0``, output ``offset``, and the
    ``value_range`` image intensities [0, 1] are mapped to (DWSNets: (0, 1) with offset 0.5; the NFN
    zoos: (-1, 1) with offset 0). Fitting: ``steps`` full-batch Adam steps at learning rate ``lr``
    from the ``init`` scheme (:func:`~encoders.zoo.siren.siren_init_`), each SIREN stopping early
    (its weights kept as they were) once its PSNR reaches ``target_psnr`` dB, checked every 10
    steps; ``batch_size`` SIRENs per batched call, ``compile`` the step with ``torch.compile``
    (about 3x faster on CPU, after a one-off compilation of 10-30 s cached on disk).
    :data:`RECIPES` names the published settings.
    """

    hidden: tuple[int, ...] = (32, 32)
    w0: float = 30.0
    offset: float = 0.5
    value_range: tuple[float, float] = (0.0, 1.0)
    steps: int = 80
    lr: float = 5e-3
    batch_size: int = 8
    init: str = "siren"
    target_psnr: float | None = None
    compile: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "value_range", tuple(float(v) for v in self.value_range))
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be a non-empty list of positive widths, got {self.hidden}")
        if len(self.value_range) != 2 or self.value_range[1] <= self.value_range[0]:
            raise ValueError(f"value_range must be an increasing pair, got {self.value_range}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {INITS}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"steps, batch_size and lr must be positive, got {self.steps}, "
                             f"{self.batch_size}, {self.lr}")

    def siren_kwargs(self, out_features: int) -> dict[str, Any]:
        """Arguments of :class:`~encoders.zoo.siren.Siren` for images with ``out_features`` channels."""
        return {"hidden": list(self.hidden), "w0": self.w0, "in_features": 2,
                "out_features": out_features, "offset": self.offset}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (``compile`` left out: it does not change what is fitted)."""
        out = asdict(self)
        out.pop("compile")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


RECIPES: dict[str, dict[str, Any]] = {
    "fast": {},
    "dwsnets": {"init": "dwsnets", "lr": 5e-4, "steps": 1000, "target_psnr": 40.0},
}
"""Named fitting settings over :class:`InrConfig`'s defaults. ``"fast"``: 80 Adam steps at 5e-3
from SIREN's init (this library's default; high learning rates move hidden weights far from their
init). ``"dwsnets"``: the DWSNets MNIST-INR zoo (Navon et al. 2023): its init, Adam at 5e-4 for
up to 1000 steps, stopping at 40 dB."""


def check_images(images: Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` is a float tensor ``[N, C, H, W]`` with values in [0, 1]."""
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor [N, C, H, W]; got {shape}")
    if images.numel() == 0:
        raise ValueError(f"images must not be empty; got shape {tuple(images.shape)}")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"image intensities must lie in [0, 1]; got range [{lo:.3g}, {hi:.3g}]")


def coordinate_grid(height: int, width: int) -> Tensor:
    """Pixel coordinates ``[H * W, 2]`` as ``(x, y)`` in [-1, 1], row-major (see module docstring)."""
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1)


def _forward(
    params: Sequence[Tensor], coords: Tensor, w0: float, offset: float
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Batched SIREN: ``coords [P, 2]`` -> output ``[B, P, C]``, layer inputs and pre-activations.

    Biases are added after ``bmm`` (not ``baddbmm``) so that a compiler fuses them with the sine.
    """
    h = coords.expand(params[0].shape[0], *coords.shape)
    inputs, pre = [h], []
    for weight, bias in zip(params[0:-2:2], params[1:-2:2]):
        z = w0 * (torch.bmm(h, weight.transpose(1, 2)) + bias[:, None, :])
        h = torch.sin(z)
        inputs.append(h)
        pre.append(z)
    out = torch.bmm(h, params[-2].transpose(1, 2)) + (params[-1][:, None, :] + offset)
    return out, inputs, pre


def _adam_step(
    params: list[Tensor], m: list[Tensor], v: list[Tensor], coords: Tensor, target: Tensor,
    w0: float, offset: float, lr: float, bc1: Tensor, bc2: Tensor,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """One Adam step on every SIREN's mean squared error against ``target [B, P, C]``.

    ``bc1``/``bc2`` are Adam's bias corrections ``1 - beta^t`` (0-d tensors, so that one compiled
    step serves every step). Returns the new ``(params, m, v)``.
    """
    out, inputs, pre = _forward(params, coords, w0, offset)
    grad_out = (out - target) * (2.0 / (out.shape[1] * out.shape[2]))
    grads: list[Tensor] = []
    for layer in reversed(range(len(inputs))):
        grads += [grad_out.sum(1), torch.bmm(grad_out.transpose(1, 2), inputs[layer])]
        if layer > 0:
            grad_out = torch.bmm(grad_out, params[2 * layer]) * torch.cos(pre[layer - 1]) * w0
    grads.reverse()
    new_params, new_m, new_v = [], [], []
    for p, m_i, v_i, g in zip(params, m, v, grads):
        m_i = _BETAS[0] * m_i + (1 - _BETAS[0]) * g
        v_i = _BETAS[1] * v_i + (1 - _BETAS[1]) * g * g
        new_params.append(p - lr * (m_i / bc1) / ((v_i / bc2).sqrt() + _EPS))
        new_m.append(m_i)
        new_v.append(v_i)
    return new_params, new_m, new_v


@cache
def _compiled_step() -> Callable[..., Any]:
    return torch.compile(_adam_step, dynamic=False)


def _init_params(seeds: Sequence[int], shapes: dict[str, tuple[int, ...]], w0: float, scheme: str) -> list[Tensor]:
    """Stacked SIREN parameters ``[B, *shape]``; SIREN ``b`` drawn from ``torch.Generator(seeds[b])``."""
    per_siren = []
    for seed in seeds:
        params = [torch.empty(shape) for shape in shapes.values()]
        siren_init_(params, w0, torch.Generator().manual_seed(int(seed)), scheme)
        per_siren.append(params)
    return [torch.stack(group) for group in zip(*per_siren)]


def psnr(fitted: Tensor, images: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB ``[B]`` of ``fitted`` vs ``images`` (both ``[B, ...]`` in [0, 1])."""
    mse = (fitted - images).flatten(1).square().mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def render_sirens(params: Sequence[Tensor], height: int, width: int, config: InrConfig) -> Tensor:
    """Images ``[B, C, H, W]`` on the [0, 1] scale drawn by stacked SIREN parameters (state-dict order)."""
    with torch.no_grad():
        out, _, _ = _forward(list(params), coordinate_grid(height, width), config.w0, config.offset)
    lo, hi = config.value_range
    images = (out - lo) / (hi - lo)
    return images.reshape(out.shape[0], height, width, -1).permute(0, 3, 1, 2)


def _fit_batch(images: Tensor, seeds: Sequence[int], config: InrConfig) -> list[Tensor]:
    """Fit one batch: ``images [B, C, H, W]`` -> stacked parameters (state-dict order)."""
    n, channels, height, width = images.shape
    lo, hi = config.value_range
    target = lo + (hi - lo) * images.permute(0, 2, 3, 1).reshape(n, height * width, channels)
    coords = coordinate_grid(height, width)
    params = _init_params(seeds, siren_param_shapes(config.hidden, 2, channels), config.w0, config.init)
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    step = _compiled_step() if config.compile else _adam_step
    done = torch.zeros(n, dtype=torch.bool)  # SIRENs that reached target_psnr: their weights are kept
    kept = [p.clone() for p in params]
    for t in range(1, config.steps + 1):
        bc1, bc2 = torch.tensor(1 - _BETAS[0] ** t), torch.tensor(1 - _BETAS[1] ** t)
        params, m, v = step(params, m, v, coords, target, config.w0, config.offset, config.lr, bc1, bc2)
        if config.target_psnr is not None and (t % _CHECK_EVERY == 0 or t == config.steps):
            reached = ~done & (psnr(render_sirens(params, height, width, config), images) >= config.target_psnr)
            for k, p in zip(kept, params):
                k[reached] = p[reached]
            done |= reached
            if done.all():
                break
    return [torch.where(done.view(-1, *[1] * (p.dim() - 1)), k, p) for k, p in zip(kept, params)]


def _fit_batch_job(job: tuple[Tensor, list[int], InrConfig]) -> list[Tensor]:
    return _fit_batch(*job)


class SirenFitter:
    """Fits SIRENs to images, single-threaded, in this process (``workers=1``) or in ``workers``
    processes (see :class:`~encoders.zoo.parallel.WorkerPool`) started once and reused by every
    :meth:`fit` call. Use as a context manager so the processes are shut down.
    """

    def __init__(self, config: InrConfig, workers: int = 1) -> None:
        self.config = config
        self.pool = WorkerPool(workers)

    def fit(self, images: Tensor, seeds: Sequence[int]) -> tuple[dict[str, Tensor], Tensor]:
        """Fit one SIREN per image.

        Args:
            images: ``[N, C, H, W]`` intensities in [0, 1].
            seeds: ``N`` initialisation seeds.

        Returns:
            ``(params, psnr)``: state-dict key -> stacked tensor ``[N, *shape]``, and the final PSNR
            ``[N]`` of every SIREN (dB, [0, 1] scale).
        """
        check_images(images)
        if len(seeds) != len(images):
            raise ValueError(f"got {len(images)} images but {len(seeds)} seeds")
        n, channels, height, width = images.shape
        batch = min(self.config.batch_size, n)
        jobs = []
        for start in range(0, n, batch):
            idx = torch.arange(start, start + batch).clamp_max(n - 1)  # pad the last batch by repetition
            jobs.append((images[idx], [int(seeds[int(i)]) for i in idx], self.config))
        results = self.pool.map(_fit_batch_job, jobs)
        stacked = [torch.cat(group)[:n] for group in zip(*results)]
        fitted = render_sirens(stacked, height, width, self.config)
        return dict(zip(siren_param_shapes(self.config.hidden, 2, channels), stacked)), psnr(fitted, images)

    def __enter__(self) -> SirenFitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.pool.close(terminate=exc_info[0] is not None)


def fit_sirens(
    images: Tensor, seeds: Sequence[int], config: InrConfig, workers: int = 1
) -> tuple[dict[str, Tensor], Tensor]:
    """One-off :meth:`SirenFitter.fit` (starts and stops a pool when ``workers > 1``)."""
    with SirenFitter(config, workers) as fitter:
        return fitter.fit(images, seeds)
