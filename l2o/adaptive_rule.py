"""The adaptive neural-graph rule: Prodigy's estimated step size, corrected per element by a head
that reads the network's neural graph.

Per step:

1. Prodigy's statistics and its estimate ``d`` of the step size (:mod:`l2o.distance`): Adam's
   moments, the running sum ``s`` of the gradients and the sum of the updates so far;
2. 7 features per element (:data:`l2o.distance.FEATURE_NAMES`), pooled per neuron (means over
   its in-weights, out-weights and own parameters) and read by the neuron-level GNN of
   :class:`~l2o.graph_rule.GraphRuleBase`, with the time features;
3. the per-element head (features + the context of the element's neurons, kind and step) outputs
   a direction correction ``a`` and a log-magnitude ``b``; the update is
   ``d c_k (1 + a) exp(exp_mult b) m / (sqrt(v) + d eps)``.

Why this form. The previous rules multiplied a learned correction onto Adam with a fixed step
size (1e-3), and tuned Adam's best learning rate on our evaluation tasks spans 1e-3 to 3e-2: no
fixed size can match it, and a per-element head cannot infer the task's scale from
per-tensor-normalised features. Prodigy's ``d`` is estimated from the optimisation itself; run
alone (the rule at initialisation: ``head_out`` is zero, so ``a = b = 0``), it reached a lower
training loss than lr-tuned Adam on 4 of 4 tasks of ``benchmarks/l2o_quality.py`` (one seed,
untuned). The learned part then only has to correct a good step, per element and per neuron,
where the graph says where a weight sits. ``d`` multiplies the whole update, so the step adapts
to the head's corrections too.

Permuting hidden neurons permutes the graph's nodes and leaves ``d`` (a sum over all elements)
unchanged, so the update is permutation-equivariant (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from l2o import distance as D
from l2o import features as F
from l2o.graph_rule import GraphContext, GraphRuleBase
from l2o.hub import register_rule

__all__ = ["AdaptiveGraphRule"]


@register_rule("neural-graph-adaptive")
class AdaptiveGraphRule(D.ProdigyStatistics, GraphRuleBase):
    """Prodigy's step size with a neural-graph correction (see the module docstring).

    Args:
        hidden: width of the neuron states (32).
        layers: GNN layers (2).
        head_hidden: width of the per-element head (16).
        exp_mult: scale of the head's log-magnitude output (0.1): with a zero-initialised
            ``head_out``, its meta-gradient is ``exp_mult`` times that of the step's log-size, so
            this sets how fast meta-training can move step sizes.
        betas: Adam's decays ``(b1, b2)``.
        d0: Prodigy's initial step-size estimate.
        eps: added to ``sqrt(v)`` (times ``d``).
        max_depth: depths beyond it share the last depth embedding.

    State: :func:`l2o.distance.init_stats` (16 B/element). Context: :class:`~l2o.graph_rule.GraphContext`.
    """

    feature_names = D.FEATURE_NAMES

    def __init__(
        self,
        hidden: int = 32,
        layers: int = 2,
        head_hidden: int = 16,
        exp_mult: float = 0.1,
        betas: Sequence[float] = (0.9, 0.999),
        d0: float = D.DEFAULT_D0,
        eps: float = 1e-8,
        max_depth: int = 32,
    ) -> None:
        super().__init__(hidden, layers, head_hidden, max_depth)
        self.exp_mult = exp_mult
        self._config = {"hidden": hidden, "layers": layers, "head_hidden": head_hidden, "exp_mult": exp_mult,
                        **self._set_prodigy(betas, d0, eps), "max_depth": max_depth}

    def fused_step(self, context: GraphContext) -> Any:
        """:class:`l2o.fused_adaptive.FusedAdaptiveStep` on ``context``: the same update in two
        compiled passes per parameter."""
        from l2o.fused_adaptive import FusedAdaptiveStep  # imports torch._dynamo: only when wanted

        return FusedAdaptiveStep(self, context)

    def forward(
        self, params: list[Tensor], grads: list[Tensor], state: dict[str, Any], context: GraphContext | None = None
    ) -> tuple[list[Tensor], dict[str, Any]]:
        """``(params, grads, state, context) -> (updates, new_state)``; ``updates[i]`` is shaped like
        ``params[i]`` (float32; float64 for float64 parameters)."""
        context = self._check_context(params, context)
        new_state = D.update_stats(grads, state, self.betas, self.d0)
        dtype = self.node_in.weight.dtype
        feats = [D.features(p, g, new_state, i, state["d"], self.eps).to(dtype)
                 for i, (p, g) in enumerate(zip(params, grads))]
        sums = self.empty_sums(context, self.node_in.weight, len(self.feature_names))
        for i, f in enumerate(feats):
            if f.numel():
                sums = self.pool(sums, context, i, f, slice(None))
        time = F.time_features(new_state["step"], self.node_in.weight)
        tables = self.neuron_tables(context, self.pooled_means(sums, context), time)
        size = state["d"] * D.bias_correction(state["step"], self.betas, state["d"])  # d_k c_k, Prodigy's step
        updates = []
        for i, (p, f) in enumerate(zip(params, feats)):
            mom = new_state["mom"][i]
            if not p.numel():
                updates.append(torch.zeros_like(mom))
                continue
            n_rows, n_cols = F.matrix_shape(p.shape)
            out = self.head(f, slice(0, n_rows), n_cols, self.head_context(context, i, n_rows, tables)).to(mom.dtype)
            base = D.direction(mom, new_state["rms"][i], new_state["d"], self.eps).reshape(-1)
            update = size.to(mom.dtype) * (1 + out[0]) * base * torch.exp(self.exp_mult * out[1])
            updates.append(update.reshape(p.shape))
        return updates, new_state
