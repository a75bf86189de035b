"""The Prodigy-based rules (AdaptiveGraphRule, StepSizeGraphRule): Prodigy at initialisation,
permutation equivariance, graph context, the optimizer contract (resume, frozen parameters,
parameter groups, bf16, meta-gradients) and their fused steps against the reference."""

from __future__ import annotations

import copy
import io
import math
from functools import partial

import pytest
import torch
from torch import nn

from l2o import (
    AdaptiveGraphRule,
    NeuralGraphOpt,
    StepSizeGraphRule,
    StepSizeScheduleRule,
    StepSizeTensorRule,
    learned_step,
    learned_step_,
)
from l2o.hub import load_rule, save_pretrained
from tests.encoders.networks import build
from tests.l2o.test_graph_rule import permuted_pair, train
from tests.l2o.test_optim import _batch, _model, _train

RULES = {"neural-graph-adaptive": AdaptiveGraphRule, "neural-graph-stepsize": StepSizeGraphRule,
         "tensor-stepsize": StepSizeTensorRule, "schedule-stepsize": StepSizeScheduleRule}
GRAPH_RULES = {name: cls for name, cls in RULES.items() if name.startswith("neural-graph")}
OUTPUT_LAYER = {AdaptiveGraphRule: "head_out", StepSizeGraphRule: "scale_out"}
"""The zero-initialised layer that makes each graph rule Prodigy at initialisation."""
each_rule = pytest.mark.parametrize("rule_class", list(RULES.values()), ids=list(RULES))
each_graph_rule = pytest.mark.parametrize("rule_class", list(GRAPH_RULES.values()), ids=list(GRAPH_RULES))
each_name = pytest.mark.parametrize("rule_name", list(RULES))


def random_rule(rule_class: type = AdaptiveGraphRule, seed: int = 0) -> nn.Module:
    """Every meta-parameter random (the zero-initialised outputs would hide the graph)."""
    torch.manual_seed(seed)
    rule = rule_class().double()
    with torch.no_grad():
        for p in rule.parameters():
            p.normal_(0, 0.5)
    return rule


def prodigy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, d0: float = 1e-6) -> list[float]:
    """Prodigy (the prodigyopt package's step with safeguard_warmup and bias correction), written
    out element by element: the slow path the rule's initialisation must reproduce. Returns d."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    b3 = math.sqrt(b2)
    params = list(model.parameters())
    x0 = [p.detach().clone() for p in params]
    m, v, s = ([torch.zeros_like(p) for p in params] for _ in range(3))
    d, numerator, ds = d0, 0.0, []
    for k in range(steps):
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        with torch.no_grad():
            correction = math.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1))
            numerator = b3 * numerator + (d / d0) * d * correction * sum(
                float((p.grad * (a - p)).sum()) for p, a in zip(params, x0))
            for i, p in enumerate(params):
                m[i] = b1 * m[i] + (1 - b1) * d * p.grad
                v[i] = b2 * v[i] + (1 - b2) * d * d * p.grad ** 2
                s[i] = b3 * s[i] + (d / d0) * d * p.grad
            new_d = max(d, numerator / sum(float(t.abs().sum()) for t in s))
            for i, p in enumerate(params):
                p -= d * correction * m[i] / (v[i].sqrt() + new_d * eps)
            d = new_d
        ds.append(d)
    return ds


@each_rule
def test_initial_rule_is_prodigy(rule_class):
    x, y = (t.double() for t in _batch())
    model, expected = _model().double(), _model().double()
    ds = prodigy(expected, x, y, steps=60)
    opt = NeuralGraphOpt(model.parameters(), rule=rule_class().double(), model=model)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    assert ds[-1] > 1000 * ds[0], "d should have grown from d0"
    torch.testing.assert_close(opt.rule_state["d"].item(), ds[-1], rtol=1e-10, atol=0)
    for p, q in zip(model.parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


@each_rule
@pytest.mark.parametrize("name", ["mlp", "cnn_mixed_kernels", "resnet", "transformer"])
def test_step_on_permuted_network_is_the_permuted_step(name, rule_class):
    from encoders.symmetry import permute_flat

    model, permuted, example, graph, sigma = permuted_pair(name)
    rule = random_rule(rule_class)
    after = train(model, example, rule)
    after_permuted = train(permuted, example, rule)
    assert (after - graph.to_flat()).abs().max() > 1e-8, "the steps should move the parameters"
    torch.testing.assert_close(after_permuted, permute_flat(graph, after, sigma), atol=1e-9, rtol=1e-9)


def test_schedule_rule_scales_every_tensor_by_one_step_size():
    """Prodigy's update times ``exp(s(t))`` for the whole model: each tensor's update over the
    initial rule's (Prodigy's) is one number, the same for every tensor, and it changes with time."""
    model = _model().double()
    params = [p.detach() for p in model.parameters()]
    rule, prodigy_rule = random_rule(StepSizeScheduleRule), StepSizeScheduleRule().double()
    torch.manual_seed(3)
    state = rule.init_state(params)
    factors = []
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        updates, new_state = rule(params, grads, state, None)
        general, _ = StepSizeTensorRule.forward(rule, params, grads, state, None)  # the per-tensor path it skips
        torch.testing.assert_close(updates, general, rtol=1e-12, atol=0)
        expected, _ = prodigy_rule(params, grads, state, None)
        ratios = torch.cat([(u / e).reshape(-1) for u, e in zip(updates, expected)])
        torch.testing.assert_close(ratios, ratios[:1].expand_as(ratios), rtol=1e-10, atol=0)
        factors.append(float(ratios[0]))
        state = new_state
    assert len({round(f, 12) for f in factors}) == 3 and all(f != 1 for f in factors)


def test_graph_rule_with_a_learned_schedule_makes_the_schedule_rules_updates_on_both_paths():
    """``graph_rule_with_schedule``: zero per-neuron step sizes plus the schedule rule's schedule is
    that rule (reference step), and the fused, compiled step is the reference step."""
    from l2o.stepsize_rule import graph_rule_with_schedule

    x, y = _batch()
    schedule = random_rule(StepSizeScheduleRule).float()
    trained = {}
    for label, rule, compile in [("schedule", schedule, False),
                                 ("graph", graph_rule_with_schedule(schedule), False),
                                 ("graph fused", graph_rule_with_schedule(schedule), True)]:
        torch.manual_seed(0)
        model = _model()
        opt = NeuralGraphOpt(model.parameters(), rule=rule, model=model, compile=compile)
        for _ in range(30):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        trained[label] = [p.detach().clone() for p in model.parameters()]
    torch.testing.assert_close(trained["graph"], trained["schedule"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(trained["graph fused"], trained["graph"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="centred"):
        StepSizeGraphRule(centred=True, schedule_hidden=8)


def test_graph_rule_with_a_schedule_stays_equivariant():
    from encoders.symmetry import permute_flat

    model, permuted, example, graph, sigma = permuted_pair("mlp")
    rule = random_rule(partial(StepSizeGraphRule, schedule_hidden=8))
    after, after_permuted = train(model, example, rule), train(permuted, example, rule)
    torch.testing.assert_close(after_permuted, permute_flat(graph, after, sigma), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", ["mlp", "resnet", "transformer"])
def test_centred_step_sizes_only_redistribute_the_step(name):
    """``centred=True``: the per-element factors vary but their geometric mean over the whole model
    is exactly 1 (the overall size stays Prodigy's ``d``), and the step stays equivariant."""
    from encoders.symmetry import permute_flat
    from l2o import features as F

    model, permuted, example, graph, sigma = permuted_pair(name)
    rule = random_rule(partial(StepSizeGraphRule, centred=True))
    params = [p.detach() for p in model.parameters()]
    context = rule.build_context(params, model, (example,))
    torch.manual_seed(2)
    log_scales = rule.log_scales(context, torch.randn(context.num_nodes, 21, dtype=torch.float64),
                                 torch.randn(11, dtype=torch.float64))
    logs = []
    for i, p in enumerate(params):
        shape = F.matrix_shape(p.shape)
        rows, cols, full = rule.scale_factors(context, i, *shape, log_scales)
        factor = rows * cols if full is None else rows * cols * full
        logs.append(factor.expand(shape).log().reshape(-1))
    logs = torch.cat(logs)
    assert logs.std() > 0.01
    assert abs(float(logs.mean())) < 1e-12
    after, after_permuted = train(model, example, rule), train(permuted, example, rule)
    torch.testing.assert_close(after_permuted, permute_flat(graph, after, sigma), atol=1e-9, rtol=1e-9)


@each_graph_rule
def test_update_uses_graph_context(rule_class):
    """Changing the last layer's gradient changes the first layer's update through the GNN (d is
    kept: only the head or the step sizes see the graph)."""
    model = _model().double()
    params = [p.detach() for p in model.parameters()]
    rule = random_rule(rule_class)
    context = rule.build_context(params, model)
    torch.manual_seed(3)
    grads = [torch.randn_like(p) for p in params]
    other = [g.clone() for g in grads]
    other[-2] = torch.randn_like(other[-2]) * grads[-2].norm() / other[-2].norm()
    first, _ = rule(params, grads, rule.init_state(params), context)
    second, _ = rule(params, other, rule.init_state(params), context)
    assert (first[0] - second[0]).abs().max() > 1e-3 * first[0].abs().max()


@pytest.mark.parametrize("rule_class, names", [
    (AdaptiveGraphRule, ("head_out.weight", "head_in.weight", "node_in.weight", "gnn.0.message.weight",
                         "to_source.weight")),
    (StepSizeGraphRule, ("scale_out.weight", "kind_scale.weight", "node_in.weight", "gnn.0.message.weight",
                         "depth.weight")),
    (StepSizeTensorRule, ("scale_out.weight", "scale_out.bias", "mlp.0.weight", "mlp.2.weight")),
    (StepSizeScheduleRule, ("scale_out.weight", "scale_out.bias", "mlp.0.weight", "mlp.2.weight")),
    (partial(StepSizeGraphRule, orthogonal=True), ("scale_out.weight", "kind_scale.weight", "node_in.weight")),
], ids=[*RULES, "neural-graph-stepsize-orthogonal"])
def test_meta_gradients_reach_every_part_of_the_rule(rule_class, names):
    model = _model().double()
    params = [p.detach() for p in model.parameters()]
    rule = random_rule(rule_class)
    context = rule.build_context(params, model)
    meta = dict(rule.named_parameters())
    state = rule.init_state(params)
    x, y = (t.double() for t in _batch())
    for _ in range(3):
        with torch.enable_grad():
            leaves = [p if p.requires_grad else p.detach().requires_grad_() for p in params]
            out = torch.func.functional_call(model, dict(zip([n for n, _ in model.named_parameters()], leaves)), (x,))
            grads = torch.autograd.grad(nn.functional.mse_loss(out, y), leaves)
        params, state = learned_step(rule, params, [g.detach() for g in grads], state, context, meta_params=meta)
    loss = nn.functional.mse_loss(torch.func.functional_call(
        model, dict(zip([n for n, _ in model.named_parameters()], params)), (x,)), y)
    loss.backward()
    for name in names:
        grad = meta[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


@each_name
def test_state_dict_round_trip_is_bit_identical_and_state_is_16_bytes_per_element(rule_name):
    model = _model()
    opt = NeuralGraphOpt(model.parameters(), lr=0.5, weight_decay=0.01, rule=rule_name, model=model)
    _train(model, opt, 5)
    per_param = [k for k, v in opt.rule_state.items() if isinstance(v, list)]
    n = sum(p.numel() for p in model.parameters())
    assert sum(t.numel() * t.element_size() for k in per_param for t in opt.rule_state[k]) == 16 * n
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    _train(model, opt, 5, seed=2)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(seed=7)
    resumed.load_state_dict(saved["model"])
    opt2 = NeuralGraphOpt(resumed.parameters(), rule=rule_name, model=resumed)
    opt2.load_state_dict(saved["opt"])
    _train(resumed, opt2, 5, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))


@each_name
def test_frozen_parameters_new_groups_nonfinite_gradients_and_bfloat16(rule_name):
    model = _model()
    opt = NeuralGraphOpt([{"params": model[2].parameters()}], rule=rule_name, model=model)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    x, y = _batch()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.mse_loss(model[2](model[1](model[0](x).detach())), y).backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(frozen, model[0].parameters()))
    opt.add_param_group({"params": list(model[0].parameters())})
    _train(model, opt, 2)
    assert not torch.equal(frozen[0], model[0].weight) and int(opt.rule_state["step"]) == 4
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    model[0].bias.grad[0] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

    # bfloat16: Prodigy's first steps (~d0) are below the rounding; d must still grow, and then they move
    half = _model().to(torch.bfloat16)
    opt = NeuralGraphOpt(half.parameters(), rule=rule_name, model=half)
    before = [p.detach().clone() for p in half.parameters()]
    for _ in range(80):
        opt.zero_grad()
        nn.functional.mse_loss(half(x.bfloat16()), y.bfloat16()).backward()
        opt.step()
    assert all(t.dtype == torch.float32 for t in opt.rule_state["mom"] + opt.rule_state["shift"])
    assert opt.rule_state["d"] > 100 * opt.rule.d0
    assert all(not torch.equal(a, b) for a, b in zip(before, half.parameters()))


@each_rule
def test_save_and_load_round_trip(tmp_path, rule_class):
    rule = random_rule(rule_class).float()
    loaded = load_rule(save_pretrained(rule, tmp_path / "rule"))
    assert isinstance(loaded, rule_class) and loaded.config() == rule.config()
    assert all(torch.equal(a, b) for a, b in zip(rule.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match="betas"):
        rule_class(betas=(0.9, 1.0))


def mild_rule(rule_class: type = AdaptiveGraphRule, **options) -> AdaptiveGraphRule | StepSizeGraphRule:
    """Random meta-parameters with outputs of O(0.1): the steps stay mostly downhill, so d grows
    (a fully random head flips half the updates and d never leaves d0). ``options``: the rule's."""
    torch.manual_seed(0)
    rule = rule_class(**options)
    with torch.no_grad():
        for p in rule.parameters():
            p.normal_(0, 0.3)
        getattr(rule, OUTPUT_LAYER[rule_class]).weight.mul_(0.03)
    return rule


def drifting_grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    """Noise plus a steady part, so that d grows as on a real loss."""
    from tests.l2o.test_fused import _grads

    return [g + 2 * b for g, b in zip(_grads(params, step), _grads(params, -1))]


@each_graph_rule
@pytest.mark.parametrize("name", ["mlp", "cnn_mixed_kernels", "resnet", "transformer"])
def test_eager_fused_step_equals_the_reference_over_50_steps(name, rule_class):
    assert_eager_fused_step_is_the_reference(name, mild_rule(rule_class))


SHIFT_CASES = [pytest.param(cls, path, id=f"{name}-{path}") for name, cls in RULES.items()
               for path in ("reference", "functional", "fused") if path != "fused" or name in GRAPH_RULES]
"""Every Prodigy rule on every path that applies its updates (the fused step: graph rules only)."""


@pytest.mark.parametrize("rule_class, path", SHIFT_CASES)
def test_shift_is_how_far_the_optimizer_moved_the_parameters(rule_class, path):
    """Prodigy's ``x0 - x`` is the step applied, ``lr`` included: after 50 steps at per-parameter
    learning rates 0.5 and 2 (the first parameter frozen on some steps) ``shift`` equals the
    parameters' displacement on every path. Why it matters: counting the rule's update alone, ``d``
    grew to undo a smaller ``lr``."""
    model, _ = build("mlp")
    model, rule = model.double(), (mild_rule(rule_class) if rule_class in GRAPH_RULES.values()
                                   else random_rule(rule_class)).double()
    params = [p.detach().clone() for p in model.parameters()]
    start = [p.clone() for p in params]
    context = rule.build_context(params, model)
    state = rule.init_state(params)
    lrs = [0.5 if i % 2 else 2.0 for i in range(len(params))]
    fused = type(rule.fused_step(context))(rule, context, compiled=False) if path == "fused" else None
    for step in range(50):
        grads = drifting_grads(params, step)
        frozen = [step % 7 == 3 and i == 0 for i in range(len(params))]
        if path == "functional":
            grads = [g if not f else torch.zeros_like(g) for g, f in zip(grads, frozen)]
            params, state = learned_step(rule, params, grads, state, context, lr=lrs)
        elif path == "fused":
            state = fused(params, grads, state, lrs, [0.0] * len(params), frozen)
        else:
            state = learned_step_(rule, params, grads, state, context, lr=lrs, frozen=frozen)
    assert float(state["d"].detach()) > rule.d0, "d should have grown"
    for shift, p, p0 in zip(state["shift"], params, start):
        torch.testing.assert_close(shift, p0 - p, rtol=1e-9, atol=1e-15)
    assert all(float((p0 - p).abs().max()) > 0 for p, p0 in zip(params, start))


def assert_eager_fused_step_is_the_reference(name: str, rule: AdaptiveGraphRule | StepSizeGraphRule,
                                             dtype: torch.dtype = torch.float32) -> None:
    """The fused arithmetic, run eagerly on network ``name`` in ``dtype`` (the rule too):
    parameters, statistics and d within 1e-5 of the reference over 50 steps."""
    from tests.l2o.test_fused import STEPS, _max_relative_error

    model, _ = build(name)
    model, rule = model.to(dtype), rule.to(dtype)
    params = [p.detach().clone() for p in model.parameters()]
    context = rule.build_context(params, model)
    fast = [p.clone() for p in params]
    state, fast_state = rule.init_state(params), rule.init_state(params)
    fused = type(rule.fused_step(context))(rule, context, compiled=False)
    n = len(params)
    lrs, wds = [1.5 - 0.1 * (i % 5) for i in range(n)], [0.01 * (i % 3) for i in range(n)]
    for step in range(STEPS):
        grads = drifting_grads(params, step)
        frozen = [step % 7 == 3 and i == 0 for i in range(n)]
        state = learned_step_(rule, params, grads, state, context, lr=lrs, weight_decay=wds, frozen=frozen)
        fast_state = fused(fast, grads, fast_state, lrs, wds, frozen)
    assert float(state["d"]) > 2 * rule.d0, "d should have grown"
    assert _max_relative_error(fast, params) < 1e-5
    assert int(fast_state["step"]) == int(state["step"]) == STEPS
    assert _max_relative_error([fast_state["d"], fast_state["numerator"]], [state["d"], state["numerator"]]) < 1e-5
    for key in ("mom", "rms", "grad_sum", "shift"):
        assert _max_relative_error(fast_state[key], state[key]) < 1e-5, key
    assert _max_relative_error(params, [p.detach() for p in model.parameters()]) > 1e-4, "the steps should move"


@pytest.mark.slow
@pytest.mark.parametrize("rule_class, options", [(AdaptiveGraphRule, {}), (StepSizeGraphRule, {}),
                                                 (StepSizeGraphRule, {"orthogonal": True})],
                         ids=[*GRAPH_RULES, "neural-graph-stepsize-orthogonal"])
def test_compiled_optimizer_matches_the_reference_and_resumes(rule_class, options):
    """NeuralGraphOpt(compile=True) against compile=False: parameter groups, weight decay, a
    parameter without gradient every few steps; then a resumed copy continues bit-identically."""
    from tests.l2o.test_fused import STEPS, _max_relative_error

    def train_steps(model: nn.Module, opt: NeuralGraphOpt, steps: int, start: int = 0) -> None:
        params = list(model.parameters())
        for step in range(start, start + steps):
            for p, g in zip(params, drifting_grads(params, step)):
                p.grad = g
            if step % 5 == 2:
                params[-1].grad = None  # a parameter without a gradient this step
            opt.step()

    # the orthogonalized direction in float64: in float32 its bfloat16 matrix products turn the two
    # paths' float rounding into bfloat16 rounding, so they agree to about 1e-2, not 1e-5
    dtype = torch.float64 if options.get("orthogonal") else torch.float32
    model, _ = build("transformer")
    model = model.to(dtype)
    twin = copy.deepcopy(model)
    rule = mild_rule(rule_class, **options).to(dtype)

    def optimizer(m: nn.Module, compile: bool) -> NeuralGraphOpt:
        params = list(m.parameters())
        groups = [{"params": params[:2], "lr": 0.5}, {"params": params[2:], "weight_decay": 0.1}]
        return NeuralGraphOpt(groups, lr=2.0, rule=copy.deepcopy(rule), model=m, compile=compile)

    reference, fused = optimizer(model, False), optimizer(twin, True)
    train_steps(model, reference, STEPS)
    train_steps(twin, fused, STEPS)
    assert fused._fused is not None and float(fused.rule_state["d"]) > 2 * rule.d0
    assert _max_relative_error(list(twin.parameters()), list(model.parameters())) < 1e-5
    for key in ("mom", "rms", "grad_sum", "shift"):
        assert _max_relative_error(fused.rule_state[key], reference.rule_state[key]) < 1e-5, key

    saved = copy.deepcopy(fused.state_dict())
    resumed_model = copy.deepcopy(twin)
    train_steps(twin, fused, 5, start=STEPS)
    resumed = optimizer(resumed_model, True)
    resumed.load_state_dict(saved)
    train_steps(resumed_model, resumed, 5, start=STEPS)
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), resumed_model.parameters()))
