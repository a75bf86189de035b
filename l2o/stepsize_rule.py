"""The step-size neural-graph rule: Prodigy's update, with a step size per neuron that a GNN on the
network's neural graph predicts.

Per step:

1. Prodigy's statistics and its estimate ``d`` of the step size (:mod:`l2o.distance`), as in
   :class:`~l2o.adaptive_rule.AdaptiveGraphRule`;
2. the 7 features per element (:data:`l2o.distance.FEATURE_NAMES`) are pooled per neuron (means
   over its in-weights, out-weights and own parameters) and read, with the time features and the
   neuron's log fan-in / fan-out, by the neuron-level GNN of
   :class:`~l2o.graph_rule.NeuronGraphBase`;
3. a linear layer turns each neuron's state into three log step sizes: ``a`` for the weights
   entering it, ``b`` for the weights leaving it, ``c`` for its own parameters (biases, norm
   scales), each soft-clipped to ``+-max_log_scale``; every element kind (layer type and channel)
   adds a learned log step size ``k``;
4. a weight from neuron ``j`` to neuron ``i`` moves by
   ``d c_k exp(a_i + b_j + k) m / (sqrt(v) + d eps)``; a neuron parameter by ``... exp(c_i + k) ...``.

Why this form. The per-element head of the previous rules costs about 20x Adam's step on a CPU,
and its meta-trained corrections did not beat Prodigy alone (``benchmarks/rule_validation.py``).
What Prodigy lacks is per-layer and per-neuron step sizes: it has one ``d`` for the whole model,
while good learning rates depend on where a weight sits (fan-in and width, as muP prescribes;
depth; role; what the neighbouring neurons see). That is exactly what a graph network over
neurons can know and a per-parameter MLP cannot, and it costs ``O(neurons)``. The per-element work
stays Prodigy's plus one multiplication by a rank-1 ``exp(a_i) exp(b_j)`` table. The time
features make the step sizes a learned schedule.

**Initialisation**: the output layer and the kind table are zero, so every log step size is 0 and
the rule is Prodigy (tested element by element). Permuting hidden neurons permutes the graph's
nodes and leaves ``d`` unchanged, so the update is permutation-equivariant (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from l2o import distance as D
from l2o import features as F
from l2o.graph_rule import _NUM_KINDS, GraphContext, NeuronGraphBase
from l2o.hub import register_rule
from l2o.orthogonal import is_orthogonalized, orthogonal_direction
from l2o.rule import UpdateRule

__all__ = ["StepSizeGraphRule", "StepSizeScheduleRule", "StepSizeTensorRule", "factors_from_terms",
           "graph_rule_with_schedule", "schedule_mlp", "scaled_prodigy", "soft_clip"]

_FAN_SCALE = 1 / math.log(1024)
"""Log fan-in/fan-out features are ``log(count) / log(1024)``: about 1 for a 1024-wide layer."""


def _checked_max_log_scale(max_log_scale: float) -> float:
    """``max_log_scale``, after a clear error for a non-positive one."""
    if max_log_scale <= 0:
        raise ValueError(f"max_log_scale must be positive, got {max_log_scale}")
    return max_log_scale


def _checked_orthogonal(orthogonal: bool) -> bool:
    """``orthogonal``, after a clear error for anything but ``True`` or ``False`` (a string such as
    ``"false"`` from a hand-edited config would otherwise switch it on)."""
    if not isinstance(orthogonal, bool):
        raise TypeError(f"orthogonal must be True or False, got {orthogonal!r}")
    return orthogonal


def soft_clip(x: Tensor, bound: float) -> Tensor:
    """``bound * tanh(x / bound)``: the identity near 0, never beyond ``+-bound``."""
    return bound * torch.tanh(x / bound)


def scaled_prodigy(
    params: Sequence[Tensor], state: dict[str, Any], new_state: dict[str, Any], factors: Sequence[Tensor | None],
    betas: tuple[float, float], eps: float, orthogonal: Sequence[bool] = (),
) -> tuple[list[Tensor], dict[str, Any]]:
    """Prodigy's updates multiplied by ``factors[i]`` (broadcastable to parameter ``i``'s ``[R, C]``
    matrix view; ``None`` for an empty parameter); ``new_state`` from
    :func:`l2o.distance.update_stats` (its ``shift`` is advanced by whoever applies the updates,
    :func:`l2o.distance.moved`). ``orthogonal[i]`` (per parameter;
    empty: none) moves parameter ``i`` along :func:`l2o.orthogonal.orthogonal_direction` instead of
    Prodigy's direction, at its RMS. Returns ``(updates, new_state)``."""
    size = state["d"] * D.bias_correction(state["step"], betas, state["d"])  # d_k c_k, Prodigy's step
    updates = []
    for i, (p, factor) in enumerate(zip(params, factors)):
        mom = new_state["mom"][i]
        if factor is None:
            updates.append(torch.zeros_like(mom))
            continue
        shape = F.matrix_shape(p.shape)
        base = D.direction(mom, new_state["rms"][i], new_state["d"], eps).reshape(shape)
        if orthogonal and orthogonal[i]:
            base = orthogonal_direction(mom.reshape(shape), base)
        updates.append((size.to(mom.dtype) * factor.to(mom.dtype) * base).reshape(p.shape))
    return updates, new_state


def factors_from_terms(
    terms: Sequence[tuple[str, Tensor, int]], n_rows: int, n_cols: int, log_scales: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor | None]:
    """A parameter's step-size factors from its :meth:`StepSizeGraphRule.scale_terms` and the
    rule's ``log_scales`` (``neurons [N, 3]``, ``kinds [K]``), split by how they vary over the
    ``[R, C]`` matrix view: ``(rows [R, 1], cols [1, C], full [R, C] or None)``. The element's
    factor is their product: ``exp`` of the sum of its neurons' and its kind's log step sizes."""
    neurons, kinds = log_scales
    rows, cols, full = neurons.new_zeros(n_rows), neurons.new_zeros(n_cols), None
    for along, ids, column in terms:
        values = (kinds if column < 0 else neurons[:, column])[ids]
        if along == "row":
            rows = rows + values
        elif along == "col":
            cols = cols + values
        else:
            full = values if full is None else full + values
    return rows.exp().unsqueeze(1), cols.exp().unsqueeze(0), None if full is None else full.exp()


def schedule_mlp(hidden: int) -> nn.Sequential:
    """Time features ``[..., 11]`` -> one log step size ``[..., 1]``: two SiLU layers of ``hidden``,
    the last layer zero (a schedule of 1 until trained)."""
    mlp = nn.Sequential(nn.Linear(F.NUM_TIME_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                        nn.Linear(hidden, 1))
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


@register_rule("neural-graph-stepsize")
class StepSizeGraphRule(D.ProdigyStatistics, NeuronGraphBase):
    """Prodigy with per-neuron step sizes from a neural-graph GNN (see the module docstring).

    Args:
        hidden: width of the neuron states (32).
        layers: GNN layers (2); 0 keeps each neuron's own pooled statistics but passes no messages
            (the ablation without graph context).
        max_log_scale: bound of each log step size (2.0; a soft clip, ``m tanh(x / m)``).
        betas: Adam's decays ``(b1, b2)``.
        d0: Prodigy's initial step-size estimate.
        eps: added to ``sqrt(v)`` (times ``d``).
        max_depth: depths beyond it share the last depth embedding.
        centred: ``True`` makes the step sizes only redistribute Prodigy's step: each column of the
            neurons' log step sizes has its mean over the elements it scales subtracted, and the
            element-kind table is not used, so the geometric mean of the factors over all elements
            is exactly 1 and the overall size stays Prodigy's ``d``. Why: trained unconstrained,
            the rule learned one global caution (about 8x smaller steps everywhere) from short
            truncations, not where a weight sits.

        schedule_hidden: width of the optional learned **schedule** (0: none): an MLP from the time
            features alone to one log step size for the whole model, added to every element's
            (:class:`StepSizeScheduleRule`'s schedule inside this rule, so that both parts are one
            rule with one fused step). Why a separate part: meta-trained by PES, a global schedule
            alone was what beat Prodigy on held-out tasks, and the GNN's per-neuron outputs, which
            also read the time, did not learn it (``benchmarks/results/rule_validation_pes``).
        orthogonal: ``True`` moves weight matrices along their orthogonalized momentum (Muon's
            direction, :mod:`l2o.orthogonal`) at the RMS of Prodigy's direction, times the same
            step sizes; ``False`` (default) keeps Prodigy's direction everywhere.

    Modules, beyond :class:`~l2o.graph_rule.NeuronGraphBase`'s: ``scale_out`` (neuron state -> the
    3 log step sizes) and ``kind_scale`` (element kind -> log step size), both zero-initialised, and
    ``schedule`` (time features -> log step size, last layer zero-initialised) or ``None``.

    State: :func:`l2o.distance.init_stats` (16 B/element). Context: :class:`~l2o.graph_rule.GraphContext`.
    """

    feature_names = D.FEATURE_NAMES

    def __init__(
        self,
        hidden: int = 32,
        layers: int = 2,
        max_log_scale: float = 2.0,
        betas: Sequence[float] = (0.9, 0.999),
        d0: float = D.DEFAULT_D0,
        eps: float = 1e-8,
        max_depth: int = 32,
        centred: bool = False,
        schedule_hidden: int = 0,
        orthogonal: bool = False,
    ) -> None:
        super().__init__(hidden, layers, max_depth, extra_node_features=3)
        if centred and schedule_hidden:
            raise ValueError("centred step sizes keep Prodigy's overall step; a schedule changes it: "
                             "choose centred=True or schedule_hidden > 0, not both")
        self.centred, self.orthogonal = centred, _checked_orthogonal(orthogonal)
        self.max_log_scale = _checked_max_log_scale(max_log_scale)
        self.scale_out = nn.Linear(hidden, 3)
        self.kind_scale = nn.Embedding(_NUM_KINDS, 1)
        self.schedule = schedule_mlp(schedule_hidden) if schedule_hidden else None
        for tensor in (self.scale_out.weight, self.scale_out.bias, self.kind_scale.weight):
            nn.init.zeros_(tensor)
        self._config = {"hidden": hidden, "layers": layers, "max_log_scale": max_log_scale,
                        **self._set_prodigy(betas, d0, eps), "max_depth": max_depth, "centred": centred,
                        "schedule_hidden": schedule_hidden, "orthogonal": orthogonal}

    def fused_step(self, context: GraphContext) -> Any:
        """:class:`l2o.fused_adaptive.FusedStepSizeStep` on ``context``: the same update in two
        compiled passes per parameter."""
        from l2o.fused_adaptive import FusedStepSizeStep  # imports torch._dynamo: only when wanted

        return FusedStepSizeStep(self, context)

    # ------------------------------------------------------------------ per step
    def log_scales(self, context: GraphContext, pooled: Tensor | None, time: Tensor) -> tuple[Tensor, Tensor]:
        """``pooled [N, 3 F]`` (:meth:`pooled_means`) and ``time [11]`` -> ``(neurons [N, 3], kinds
        [K])``: each neuron's log step sizes for its in-weights, out-weights and own parameters,
        and each element kind's, soft-clipped (and centred, with a zero kind table, if
        :attr:`centred`); with a :attr:`schedule`, its soft-clipped log step size for this time is
        added to every kind's. ``pooled=None`` when :meth:`constant_neurons`: the GNN is skipped and
        every neuron gets ``scale_out``'s bias, which is what the GNN's states times a zero weight give."""
        if pooled is None:
            if not self.constant_neurons():
                raise ValueError("pooled=None skips the GNN, which only a rule with constant_neurons() may do")
            raw = self.scale_out.bias.expand(context.num_nodes, 3)
        else:
            fan = context.pool_sizes.to(pooled.dtype).log() * _FAN_SCALE
            raw = self.scale_out(self.neuron_states(context, pooled, time, fan))
        neurons = soft_clip(raw, self.max_log_scale)
        kinds = soft_clip(self.kind_scale.weight[:, 0], self.max_log_scale)
        if self.schedule is not None:  # every element has exactly one kind: the schedule scales all of them once
            kinds = kinds + soft_clip(self.schedule(time)[0], self.max_log_scale)
        if self.centred:  # each element counts once in its column(s): counts are the weights
            counts = context.counts.to(pooled.dtype)
            neurons = neurons - (neurons * counts).sum(0) / counts.sum(0).clamp(min=1)
            kinds = torch.zeros_like(kinds)
        return neurons, kinds

    def constant_neurons(self) -> bool:
        """Whether the per-neuron log step sizes are the same for every neuron whatever the graph
        says: ``scale_out``'s weight is zero, as in the shipped v6 and v7, whose per-neuron step sizes
        ship at 1. The fused step then skips the per-neuron pooling and the GNN (about a quarter of
        v7's step on an MLP), which cannot change its update."""
        return not bool(self.scale_out.weight.detach().any())

    def orthogonalized(self, params: Sequence[Tensor], context: GraphContext) -> list[bool]:
        """Per parameter, whether it moves along the orthogonalized direction: with
        :attr:`orthogonal`, every weight matrix (:func:`l2o.orthogonal.is_orthogonalized`) except
        those into the network's output neurons. Why not those: Muon's own advice (hidden and input
        matrices only, the output layer with Adam), and on two of the validation tasks orthogonalizing
        the classifier layer too lost most of what the other matrices gained. Only the graph knows which
        matrix that is; the per-tensor twin cannot tell it from a shape."""
        if not self.orthogonal:
            return []
        return [is_orthogonalized(tuple(p.shape)) and context.on_edge[i] and not context.into_output[i]
                for i, p in enumerate(params)]

    @staticmethod
    def scale_terms(context: GraphContext, i: int) -> list[tuple[str, Tensor, int]]:
        """What parameter ``i``'s log step sizes add up: ``(along, ids, column)`` per term, where
        ``ids`` index the neurons (along the matrix view's rows, columns or every element, as
        ``along`` says) and ``column`` picks the table of :meth:`log_scales` (0: in-weights of the
        target, 1: out-weights of the source, 2: own parameters; -1: the element-kind table)."""
        if context.on_edge[i]:
            terms = [(context.target[i], 0), (context.source[i], 1)]
        else:
            terms = [(context.source[i], 2)]
        return [(m.along, m.ids, column) for m, column in [*terms, (context.kind[i], -1)]]

    def scale_factors(
        self, context: GraphContext, i: int, n_rows: int, n_cols: int, log_scales: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Parameter ``i``'s step-size factors over its ``[R, C]`` matrix view (see
        :func:`factors_from_terms`)."""
        return factors_from_terms(self.scale_terms(context, i), n_rows, n_cols, log_scales)

    def forward(
        self, params: list[Tensor], grads: list[Tensor], state: dict[str, Any], context: GraphContext | None = None
    ) -> tuple[list[Tensor], dict[str, Any]]:
        """``(params, grads, state, context) -> (updates, new_state)``; ``updates[i]`` is shaped like
        ``params[i]`` (float32; float64 for float64 parameters)."""
        context = self._check_context(params, context)
        new_state = D.update_stats(grads, state, self.betas, self.d0)
        dtype = self.node_in.weight.dtype
        sums = self.empty_sums(context, self.node_in.weight, len(self.feature_names))
        for i, (p, g) in enumerate(zip(params, grads)):
            if p.numel():
                sums = self.pool(sums, context, i, D.features(p, g, new_state, i, state["d"], self.eps).to(dtype),
                                 slice(None))
        time = F.time_features(new_state["step"], self.node_in.weight)
        log_scales = self.log_scales(context, self.pooled_means(sums, context), time)
        factors = []
        for i, p in enumerate(params):
            if p.numel():
                rows, cols, full = self.scale_factors(context, i, *F.matrix_shape(p.shape), log_scales)
                factors.append(rows * cols if full is None else rows * cols * full)
            else:
                factors.append(None)
        return scaled_prodigy(params, state, new_state, factors, self.betas, self.eps,
                              self.orthogonalized(params, context))


@register_rule("tensor-stepsize")
class StepSizeTensorRule(D.ProdigyStatistics, UpdateRule):
    """The twin of :class:`StepSizeGraphRule` without the graph: Prodigy with one learned step size
    per tensor (as Celo's per-tensor normalisation and learned schedule), from what a rule that does
    not know the architecture can see.

    Per tensor, an MLP reads the mean and the mean absolute value of the 7 per-element features
    (:data:`l2o.distance.FEATURE_NAMES`), ``log(rows)`` and ``log(cols)`` of its matrix view, its
    dimensionality (one-hot: vector, matrix, more) and the time features, and outputs a log step
    size ``s`` (soft-clipped to ``+-max_log_scale``); the tensor moves by
    ``d c_k exp(s) m / (sqrt(v) + d eps)``. It is the ablation that tells whether the neurons and
    their graph, rather than per-layer step sizes and a schedule, make the difference.

    Args:
        hidden: width of the MLP's two hidden layers (32).
        max_log_scale: bound of the log step size (2.0).
        betas: Adam's decays ``(b1, b2)``.
        d0: Prodigy's initial step-size estimate.
        eps: added to ``sqrt(v)`` (times ``d``).
        orthogonal: as :class:`StepSizeGraphRule`'s: Muon's direction for weight matrices.

    **Initialisation**: ``scale_out`` is zero, so the rule is Prodigy. State:
    :func:`l2o.distance.init_stats` (16 B/element). No context.
    """

    feature_names = D.FEATURE_NAMES

    def __init__(
        self,
        hidden: int = 32,
        max_log_scale: float = 2.0,
        betas: Sequence[float] = (0.9, 0.999),
        d0: float = D.DEFAULT_D0,
        eps: float = 1e-8,
        orthogonal: bool = False,
    ) -> None:
        super().__init__()
        self.max_log_scale, self.orthogonal = _checked_max_log_scale(max_log_scale), _checked_orthogonal(orthogonal)
        self.mlp = nn.Sequential(nn.Linear(self.n_inputs(), hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.scale_out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.scale_out.weight)
        nn.init.zeros_(self.scale_out.bias)
        self._config = {"hidden": hidden, "max_log_scale": max_log_scale, **self._set_prodigy(betas, d0, eps),
                        "orthogonal": orthogonal}

    def orthogonalized(self, params: Sequence[Tensor]) -> list[bool]:
        """Per parameter, whether it moves along the orthogonalized direction: with
        :attr:`orthogonal`, every weight matrix (:func:`l2o.orthogonal.is_orthogonalized`), the
        output layer's included (without the graph, a shape does not say which layer that is)."""
        return [is_orthogonalized(tuple(p.shape)) for p in params] if self.orthogonal else []

    def n_inputs(self) -> int:
        """Width of :meth:`tensor_inputs`."""
        return 2 * len(self.feature_names) + 2 + 3 + F.NUM_TIME_FEATURES

    def tensor_inputs(self, param: Tensor, feats: Tensor, time: Tensor) -> Tensor:
        """The MLP's inputs for one tensor: ``feats [7, R, C]`` (:func:`l2o.distance.features`) and
        ``time [11]`` -> ``[26 + 11]``."""
        rows, cols = F.matrix_shape(param.shape)
        flat = feats.reshape(feats.shape[0], -1)
        shape = time.new_tensor([math.log(rows) * _FAN_SCALE, math.log(cols) * _FAN_SCALE])
        ndim = time.new_zeros(3)
        ndim[min(max(param.dim(), 1), 3) - 1] = 1
        return torch.cat([flat.mean(1), flat.abs().mean(1), shape, ndim, time])

    def forward(
        self, params: list[Tensor], grads: list[Tensor], state: dict[str, Any], context: Any = None
    ) -> tuple[list[Tensor], dict[str, Any]]:
        """``(params, grads, state, context) -> (updates, new_state)``; ``context`` is ignored."""
        new_state = D.update_stats(grads, state, self.betas, self.d0)
        dtype = self.scale_out.weight.dtype
        time = F.time_features(new_state["step"], self.scale_out.weight)
        present = [i for i, p in enumerate(params) if p.numel()]
        inputs = [self.tensor_inputs(params[i], D.features(params[i], grads[i], new_state, i, state["d"],
                                                           self.eps).to(dtype), time) for i in present]
        factors: list[Tensor | None] = [None] * len(params)
        if present:
            log_scales = soft_clip(self.scale_out(self.mlp(torch.stack(inputs)))[:, 0], self.max_log_scale)
            for i, log_scale in zip(present, log_scales):
                factors[i] = log_scale.exp()
        return scaled_prodigy(params, state, new_state, factors, self.betas, self.eps, self.orthogonalized(params))


@register_rule("schedule-stepsize")
class StepSizeScheduleRule(StepSizeTensorRule):
    """The ablation with nothing learned but a schedule: Prodigy times one step size for the whole
    model, ``exp(s(t))``, from the time features alone (the role of Celo's learned schedule, which
    also reads loss features that ``NeuralGraphOpt`` does not get without a closure). What the
    per-tensor rule (:class:`StepSizeTensorRule`) and the per-neuron graph rule
    (:class:`StepSizeGraphRule`) gain over it is what knowing the tensor or the neuron adds.

    Same arguments, state and initialisation (Prodigy) as :class:`StepSizeTensorRule`.
    """

    def n_inputs(self) -> int:
        return F.NUM_TIME_FEATURES

    def tensor_inputs(self, param: Tensor, feats: Tensor, time: Tensor) -> Tensor:
        """Only ``time [11]``: every tensor gets the same input, hence the same step size."""
        return time

    def forward(
        self, params: list[Tensor], grads: list[Tensor], state: dict[str, Any], context: Any = None
    ) -> tuple[list[Tensor], dict[str, Any]]:
        """:meth:`StepSizeTensorRule.forward` without the per-element features it would not read:
        one step size from the time, for every tensor."""
        new_state = D.update_stats(grads, state, self.betas, self.d0)
        time = F.time_features(new_state["step"], self.scale_out.weight)
        scale = soft_clip(self.scale_out(self.mlp(time))[0], self.max_log_scale).exp()
        factors = [scale if p.numel() else None for p in params]
        return scaled_prodigy(params, state, new_state, factors, self.betas, self.eps, self.orthogonalized(params))


def graph_rule_with_schedule(schedule: StepSizeScheduleRule, **options: Any) -> StepSizeGraphRule:
    """A :class:`StepSizeGraphRule` (``options``: its other arguments) whose ``schedule`` is
    ``schedule``'s learned one and whose per-neuron and per-kind step sizes are zero: the same
    updates as ``schedule`` (tested), with the graph rule's fused step, and a starting point for
    meta-training the per-neuron step sizes on top of the schedule."""
    config = schedule.config()
    options = {"orthogonal": config["orthogonal"], **options}
    rule = StepSizeGraphRule(schedule_hidden=config["hidden"], max_log_scale=config["max_log_scale"],
                             betas=config["betas"], d0=config["d0"], eps=config["eps"], **options)
    assert rule.schedule is not None
    with torch.no_grad():
        for target, source in zip([rule.schedule[0], rule.schedule[2], rule.schedule[4]],
                                  [schedule.mlp[0], schedule.mlp[2], schedule.scale_out], strict=True):
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
    return rule.to(schedule.scale_out.weight.dtype)
