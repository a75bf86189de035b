"""An orthogonalized base direction for weight matrices (Muon's), at the size of Prodigy's.

Muon moves a weight matrix along its orthogonalized momentum: the momentum ``M = U S V^T`` with its
singular values pushed towards 1, ``~U V^T``, computed by a few Newton-Schulz iterations (matrix
products only, so it runs anywhere a matmul does, vmapped and compiled). Celo2 offers the same for
the 2-D weights of a learned optimizer. Here the orthogonalized momentum replaces only the
*direction* of Prodigy's update for a matrix: it is rescaled to the RMS of Prodigy's own direction
``m / (sqrt(v) + d eps)`` for that tensor, so the step sizes a rule learned for Prodigy's direction
(its schedule, per-tensor or per-neuron factors) keep their meaning.

Which tensors: those with :func:`is_orthogonalized` shapes, 2-D parameters (linear layers'
weights, embedding and position tables) of at least 2 rows and 2 columns; convolution kernels and
vectors keep Prodigy's direction. The graph rule further leaves out the matrices into the network's
output neurons, which its graph identifies; the per-tensor twin, which sees only shapes, cannot
(:meth:`l2o.stepsize_rule.StepSizeGraphRule.orthogonalized`).

Precision: the matrix products take bfloat16 inputs for float32 and narrower parameters
(:func:`product_dtype`), as Muon's do; float64 stays float64.

Permuting hidden neurons permutes the rows and columns of the matrices (``P M Q``), and
``NS(P M Q) = P NS(M) Q`` (every iteration is a polynomial in ``M M^T`` times ``M``): the
direction stays permutation-equivariant (tested on the function and through the rules).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NS_COEFFICIENTS", "NS_STEPS", "is_orthogonalized", "newton_schulz", "orthogonal_direction",
           "product_dtype"]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""The quintic iteration ``X <- a X + (b A + c A^2) X``, ``A = X X^T``, of Muon (Jordan et al.
2024): coefficients chosen for the steepest slope at 0, so 5 steps bring every singular value
into roughly ``[0.7, 1.2]`` (not exactly 1, which does not hurt training)."""

NS_STEPS = 5


def is_orthogonalized(shape: tuple[int, ...]) -> bool:
    """Whether a parameter of ``shape`` moves along an orthogonalized direction (when the rule asks
    for it): 2-D with at least 2 rows and 2 columns."""
    return len(shape) == 2 and min(shape) >= 2


def product_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of :func:`newton_schulz`'s matrix products for inputs of ``dtype``: bfloat16 for
    float32 and narrower (as Muon does: the iteration is approximate anyway, and bfloat16 products
    are several times faster where the hardware has them, GPU tensor cores and CPUs with AMX), the
    input's own dtype otherwise (float64 stays exact, for tests)."""
    return torch.bfloat16 if dtype in (torch.float32, torch.float16, torch.bfloat16) else dtype


def newton_schulz(matrix: Tensor, steps: int = NS_STEPS) -> Tensor:
    """``[..., R, C] -> [..., R, C]``: ``matrix`` with its singular values pushed towards 1 (about
    ``U V^T``), by :data:`NS_STEPS` quintic Newton-Schulz iterations.

    The iteration runs on the wide orientation (``A = X X^T`` is ``min(R, C)`` square, the cheaper
    product); the input is first divided by its Frobenius norm, which bounds the spectral norm by 1
    as the iteration requires. Matrix products take their inputs in :func:`product_dtype` and
    everything else runs in the input's dtype, so that eager and compiled code round alike (the
    products are the same kernels in both). A zero matrix stays zero."""
    a, b, c = NS_COEFFICIENTS
    low = product_dtype(matrix.dtype)
    tall = matrix.shape[-2] > matrix.shape[-1]
    x = matrix.mT if tall else matrix
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)
    for _ in range(steps):
        x_low = x.to(low)
        gram = (x_low @ x_low.mT).to(x.dtype)
        gram_low = gram.to(low)
        poly = b * gram + c * (gram_low @ gram_low).to(x.dtype)
        x = a * x + (poly.to(low) @ x_low).to(x.dtype)
    return x.mT if tall else x


def orthogonal_direction(mom: Tensor, direction: Tensor) -> Tensor:
    """``[..., R, C]``: :func:`newton_schulz` of the momentum ``mom``, rescaled to the RMS of
    ``direction`` (Prodigy's direction of the same tensor), so that only where the tensor moves
    changes, not how far."""
    ortho = newton_schulz(mom)
    # both mean squares clamped before the square root: its derivative at 0 is infinite
    wanted = direction.square().mean(dim=(-2, -1), keepdim=True).clamp(min=1e-30)
    found = ortho.square().mean(dim=(-2, -1), keepdim=True).clamp(min=1e-30)
    return ortho * (wanted / found).sqrt()
