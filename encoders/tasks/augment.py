"""Weight-space augmentations of SIREN INRs (the neural-graphs INR-classification recipe).

Each acts on stacked SIREN parameters ``{"layers.{i}.weight": [B, out, in], "layers.{i}.bias":
[B, out]}`` (the zoo's state-dict keys) and draws one transformation per INR:

* :func:`transform_coordinates`: the INR of the image seen through an affine change of its input
  coordinates, ``g(x) = f(A x + t)``: ``W_1 <- W_1 A`` and ``b_1 <- b_1 + W_1 t``. Rotations (+-45
  degrees), scalings (+-20 %) and translations (0.25) leave a digit's class unchanged.
* :func:`flip_signs`: ``sin`` is odd, so negating a hidden neuron's incoming weights and bias
  together with its outgoing weights leaves the function unchanged: a symmetry of SIRENs that
  neuron permutations do not cover.
* :func:`drop_weights`: zero a random 1 % of the weights (a regulariser, not a symmetry).

:class:`InrAugment` draws and applies all three; the trainer uses it on training batches of
``inr-classify`` when ``FitConfig(augment=True)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["InrAugment", "drop_weights", "flip_signs", "transform_coordinates"]


def _layers(params: dict[str, Tensor]) -> int:
    return len([k for k in params if k.endswith(".weight")])


def transform_coordinates(params: dict[str, Tensor], matrix: Tensor, shift: Tensor) -> dict[str, Tensor]:
    """The INRs ``x -> f(matrix @ x + shift)``; ``matrix [B, in, in]``, ``shift [B, in]``."""
    out = dict(params)
    weight, bias = params["layers.0.weight"], params["layers.0.bias"]
    out["layers.0.weight"] = weight @ matrix
    out["layers.0.bias"] = bias + (weight @ shift.unsqueeze(-1)).squeeze(-1)
    return out


def flip_signs(params: dict[str, Tensor], signs: list[Tensor]) -> dict[str, Tensor]:
    """Negate hidden neurons: ``signs[l] [B, width_l]`` (+-1) for each sine layer ``l``; neuron ``j``
    of layer ``l`` gets its incoming weights and bias times ``signs[l][:, j]``, and so do its
    outgoing weights (the columns of layer ``l + 1``)."""
    if len(signs) != _layers(params) - 1:
        raise ValueError(f"need signs for {_layers(params) - 1} hidden layers, got {len(signs)}")
    out = dict(params)
    for layer, sign in enumerate(signs):
        out[f"layers.{layer}.weight"] = out[f"layers.{layer}.weight"] * sign.unsqueeze(-1)
        out[f"layers.{layer}.bias"] = out[f"layers.{layer}.bias"] * sign
        out[f"layers.{layer + 1}.weight"] = out[f"layers.{layer + 1}.weight"] * sign.unsqueeze(-2)
    return out


def drop_weights(params: dict[str, Tensor], rate: float, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Zero each weight (not bias) with probability ``rate``."""
    return {k: v * (torch.rand(v.shape, generator=generator) >= rate) if k.endswith(".weight") else v
            for k, v in params.items()}


@dataclass(frozen=True)
class InrAugment:
    """Random augmentations of 2-D-input SIRENs, one draw per INR.

    ``rotation`` (degrees, uniform in +-), ``scale`` (relative, uniform in ``1 +- scale``),
    ``translation`` (uniform in +-, per coordinate), ``sign_flips`` (each hidden neuron negated
    with probability 1/2), ``weight_dropout`` (rate). Defaults: the neural-graphs recipe.
    """

    rotation: float = 45.0
    scale: float = 0.2
    translation: float = 0.25
    sign_flips: bool = True
    weight_dropout: float = 0.01

    def __call__(self, params: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        batch = params["layers.0.weight"].shape[0]
        if params["layers.0.weight"].shape[-1] != 2:
            raise ValueError("coordinate augmentations are for INRs of 2-D coordinates (images)")

        def uniform(*shape: int) -> Tensor:
            return 2 * torch.rand(shape, generator=generator) - 1

        angle = uniform(batch) * math.radians(self.rotation)
        factor = 1 + uniform(batch) * self.scale
        cos, sin = torch.cos(angle) * factor, torch.sin(angle) * factor
        matrix = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        out = transform_coordinates(params, matrix.to(params["layers.0.weight"]),
                                    (uniform(batch, 2) * self.translation).to(params["layers.0.weight"]))
        if self.sign_flips:
            widths = [params[f"layers.{i}.bias"].shape[-1] for i in range(_layers(params) - 1)]
            out = flip_signs(out, [torch.where(torch.rand(batch, w, generator=generator) < 0.5, -1.0, 1.0)
                                   .to(params["layers.0.weight"]) for w in widths])
        if self.weight_dropout:
            out = drop_weights(out, self.weight_dropout, generator)
        return out
