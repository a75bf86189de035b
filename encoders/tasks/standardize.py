"""Per-layer weight standardization with training-set statistics (as the neural-graph reference code).

Every parameter tensor (a layer's weight, a layer's bias) gets its own mean and standard deviation,
computed over all its elements in all training networks; each element is then mapped to
``(w - mean) / std``. This only makes sense when the networks share one architecture (INR zoos);
for zoos of mixed architectures :meth:`LayerStandardizer.identity` leaves the weights as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["LayerStandardizer"]


class LayerStandardizer:
    """Elementwise affine map ``flat [..., P] -> (flat - mean) / std`` with per-tensor ``mean``/``std [P]``."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError(f"mean and std must be matching 1-D tensors, got {tuple(mean.shape)}, {tuple(std.shape)}")
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, flat: Tensor, sizes: Sequence[int], eps: float = 1e-8) -> LayerStandardizer:
        """Statistics of ``flat [N, P]`` (training networks, parameters concatenated in graph order),
        one mean and std per parameter tensor of ``sizes`` elements each."""
        if flat.dim() != 2 or flat.shape[1] != sum(sizes):
            raise ValueError(f"expected flat parameters [N, {sum(sizes)}], got {tuple(flat.shape)}")
        means, stds = [], []
        for chunk, size in zip(flat.split(list(sizes), dim=1), sizes):
            means.append(chunk.mean().expand(size))
            stds.append(chunk.std(unbiased=False).clamp_min(eps).expand(size))
        return cls(torch.cat(means), torch.cat(stds))

    @classmethod
    def identity(cls, num_params: int) -> LayerStandardizer:
        """The map that changes nothing (zoos of mixed architectures)."""
        return cls(torch.zeros(num_params), torch.ones(num_params))

    def __call__(self, flat: Tensor) -> Tensor:
        return (flat - self.mean) / self.std

    def inverse(self, flat: Tensor) -> Tensor:
        return flat * self.std + self.mean
