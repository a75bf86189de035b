"""The statistics baseline (StatNN, Unterthiner et al. 2020): per-layer weight statistics -> gradient boosting.

Each parameter tensor of a network (a layer's weight, a layer's bias) is summarized by its mean,
variance and the quantiles 0, 0.25, 0.5, 0.75, 1 of its values; the summaries of all tensors are
concatenated in graph order (zero-padded to the deepest network of mixed zoos) and fed to
scikit-learn's histogram gradient boosting (a classifier for labels, a regressor otherwise).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from encoders.tasks.data import WeightSet, param_sizes

__all__ = ["QUANTILES", "fit_stats_baseline", "weight_statistics"]

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
_PER_TENSOR = 2 + len(QUANTILES)


def weight_statistics(data: WeightSet, tensors: int) -> Tensor:
    """``[N, tensors * 7]`` statistics of the raw weights of every network of ``data``."""
    out = torch.zeros(len(data), tensors * _PER_TENSOR)
    q = torch.tensor(QUANTILES)
    for i, (graph, raw) in enumerate(zip(data.structures, data.raw)):
        sizes = param_sizes(graph)
        if len(sizes) > tensors:
            raise ValueError(f"network {i} has {len(sizes)} parameter tensors, more than the {tensors} fitted")
        for t, chunk in enumerate(raw[:graph.num_params].split(sizes)):
            stats = torch.cat([chunk.mean()[None], chunk.var(unbiased=False)[None], torch.quantile(chunk, q)])
            out[i, t * _PER_TENSOR:(t + 1) * _PER_TENSOR] = stats
    return out


def fit_stats_baseline(train: WeightSet, evaluate: dict[str, WeightSet], classify: bool,
                       seed: int = 0) -> dict[str, Tensor]:
    """Fit on ``train`` and return ``{split: predictions [N]}`` for each set of ``evaluate``.

    Classification predicts labels; otherwise the regressor predicts the target value.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    tensors = max(len(g.param_shapes) for g in train.structures)
    x = weight_statistics(train, tensors).numpy()
    y = train.target.numpy()
    model = (HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor)(
        max_iter=200, learning_rate=0.05, random_state=seed)
    model.fit(x, y)
    return {name: torch.as_tensor(np.asarray(model.predict(weight_statistics(s, tensors).numpy())))
            for name, s in evaluate.items()}
