"""The per-parameter MLP baseline rule (small_fc_lopt / AdafacLO style) with an Adam skip term."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from l2o import features as F
from l2o.hub import register_rule
from l2o.rule import UpdateRule

__all__ = ["FFRule"]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@register_rule("ff")
class FFRule(UpdateRule):
    """Per-parameter MLP on the :mod:`l2o.features` (39 per element) outputting direction ``d``
    and magnitude ``m``; no architecture context.

    Update of each element (the optimizer then applies ``p <- p - lr * update``)::

        update = step_mult * (d + skip * adam) * exp(exp_mult * m)

    where ``adam = m̂ / (sqrt(v̂) + 1e-8)`` is Adam's bias-corrected direction from the first
    momentum and the second moment (:func:`l2o.features.adam_direction`).

    **Initialisation** (documented behaviour until a meta-trained rule ships): the MLP's last
    layer is zero, so ``d = m = 0`` and ``update = step_mult * skip * adam``. With the defaults
    (``step_mult = 1e-3``, ``skip = 1``, decays 0.9 / 0.999) the rule *is*
    ``torch.optim.Adam(lr=1e-3)`` at ``lr = 1`` (up to float32 rounding); ``lr`` then scales it
    like Adam's learning rate. Meta-training learns a correction ``d`` and a log-scale ``m`` on
    top (``exp_mult = 1e-3`` as in learned_optimization, so ``m`` needs outputs of O(1000) to
    change the step size by ``e``). ``skip = 0`` gives the plain Metz et al. form.

    Args:
        hidden_size: width of the hidden layers (32).
        hidden_layers: number of hidden ReLU layers (2): ``39 -> 32 -> 32 -> 2``.
        step_mult: ``b`` of ``d * exp(a m) * b`` (1e-3).
        exp_mult: ``a`` of ``d * exp(a m) * b`` (1e-3).
        skip: weight of the Adam direction in ``d``.
        momentum_decays: EMA decays of the three momenta; the first is Adam's beta1 in the skip term.
        rms_decay: EMA decay of the second moment (Adam's beta2 in the skip term).
        factored_decays: EMA decays of the factored (row/column) statistics.
        learn_decays: if true, the decays are meta-parameters (``decay_logits``); else fixed.
        chunk_size: elements per feature block (memory knob, not part of the rule's config).

    State: :func:`l2o.features.init_stats`, 16 B/element (+ O(rows + cols) per matrix).
    Transient memory of a step: the new state (16 B/element, the step is a pure function), g²
    (4 B), the update (4 B, 8 B while blocks are concatenated) and ``~0.5 kB * chunk_size`` for
    features and MLP activations; measured peak ~40 B/element on a 4M-element matrix on CPU.
    """

    def __init__(
        self,
        hidden_size: int = 32,
        hidden_layers: int = 2,
        step_mult: float = 1e-3,
        exp_mult: float = 1e-3,
        skip: float = 1.0,
        momentum_decays: Sequence[float] = (0.9, 0.99, 0.999),
        rms_decay: float = 0.999,
        factored_decays: Sequence[float] = (0.9, 0.99, 0.999),
        learn_decays: bool = False,
        chunk_size: int = 2**16,
    ) -> None:
        super().__init__()
        if len(momentum_decays) != 3 or len(factored_decays) != 3:
            raise ValueError("momentum_decays and factored_decays need exactly 3 decays each")
        decays = [*momentum_decays, rms_decay, *factored_decays]
        if not all(0.0 < d < 1.0 for d in decays):
            raise ValueError(f"decays must lie in (0, 1), got {decays}")
        # config(): every constructor argument but chunk_size. With learn_decays the decays listed
        # are the initial ones; the learned values are in the weights.
        self._config = {
            "hidden_size": hidden_size,
            "hidden_layers": hidden_layers,
            "step_mult": step_mult,
            "exp_mult": exp_mult,
            "skip": skip,
            "momentum_decays": list(momentum_decays),
            "rms_decay": rms_decay,
            "factored_decays": list(factored_decays),
            "learn_decays": learn_decays,
        }
        self.step_mult, self.exp_mult, self.skip = step_mult, exp_mult, skip
        self.learn_decays = learn_decays
        self.chunk_size = chunk_size
        self._fixed_decays = F.Decays(tuple(momentum_decays), rms_decay, tuple(factored_decays))
        if learn_decays:
            self.decay_logits = nn.Parameter(torch.tensor([_logit(d) for d in decays]))
        widths = [F.NUM_FEATURES] + [hidden_size] * hidden_layers
        layers: list[nn.Module] = []
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        last = nn.Linear(widths[-1], 2)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*layers, last)

    def decays(self) -> F.Decays:
        """The EMA decays: the constructor's floats, or (``learn_decays``) the sigmoid of the
        meta-learned logits ``decay_logits [7]`` (3 momentum, rms, 3 factored)."""
        if not self.learn_decays:
            return self._fixed_decays
        d = torch.sigmoid(self.decay_logits)
        return F.Decays(momentum=d[0:3], rms=d[3], factored=d[4:7])

    def init_state(self, params: Sequence[Tensor]) -> dict[str, Any]:
        """Zero statistics, see :func:`l2o.features.init_stats`."""
        return F.init_stats(params)

    def forward(
        self, params: list[Tensor], grads: list[Tensor], state: dict[str, Any], context: Any = None
    ) -> tuple[list[Tensor], dict[str, Any]]:
        """``(params, grads, state) -> (updates, new_state)``; ``updates[i]`` has the shape of
        ``params[i]`` (float32, float64 for float64 parameters). ``context`` is ignored."""
        decays = self.decays()
        new_state = F.update_stats(params, grads, state, decays)
        step = new_state["step"]
        mlp_dtype = self.mlp[0].weight.dtype
        updates = []
        for i, (p, g) in enumerate(zip(params, grads)):
            stats = F.tensor_stats(new_state, i)
            mom, rms = stats.mom[0].reshape(-1), stats.rms.reshape(-1)
            pieces = []
            for start, stop, feats in F.feature_chunks(p, g, stats, step, self.chunk_size):
                out = self.mlp(feats.to(mlp_dtype))
                adam = F.adam_direction(mom[start:stop], rms[start:stop], step, decays)
                d, m = out.unbind(1)
                pieces.append(F.direction_magnitude_update(d, m, adam, self.step_mult, self.exp_mult, self.skip))
            if len(pieces) > 1:
                pieces = [torch.cat(pieces)]
            updates.append(pieces[0].reshape(p.shape) if pieces else torch.zeros_like(stats.rms))
        return updates, new_state
