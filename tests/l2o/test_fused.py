"""The fused step (l2o.fused) against the reference step it sits beside, eager and compiled."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from encoders.symmetry import permute_flat
from l2o import FFRule, NeuralGraphOpt, NeuralGraphRule, learned_step_
from l2o import features as F
from l2o.fused import FusedStep
from tests.encoders.networks import build
from tests.l2o.test_graph_rule import _as_full, permuted_pair

STEPS = 50


def _rule(seed: int = 0, dtype: torch.dtype = torch.float32, **kw) -> NeuralGraphRule:
    """Every meta-parameter random, at a scale where the graph context changes the update by O(1)."""
    torch.manual_seed(seed)
    rule = NeuralGraphRule(**kw).to(dtype)
    with torch.no_grad():
        for p in rule.parameters():
            p.normal_(0, 0.3)
    return rule


def _grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    return [(torch.randn(p.shape, generator=gen) * 0.01).to(p.dtype) for p in params]


def _max_relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    a, b = [x.detach().double() for x in a], [y.detach().double() for y in b]
    return max(float((x - y).norm() / y.norm().clamp(min=1e-30)) for x, y in zip(a, b))


def _wide() -> tuple[nn.Module, torch.Tensor]:
    """A layer above 65k elements: the reference works on it in several row blocks."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 3)), torch.randn(4, 300)


@pytest.mark.parametrize("name", ["mlp", "siren", "cnn_mixed_kernels", "cnn_flatten", "resnet", "transformer",
                                  "scaled_mlp", "wide"])
@pytest.mark.parametrize("full_maps", [False, True], ids=["factored-maps", "element-maps"])
def test_eager_fused_step_equals_the_reference_over_50_steps(name, full_maps):
    """The fused arithmetic, run eagerly: parameters and every statistic within 1e-5 of the reference."""
    model, _ = _wide() if name == "wide" else build(name)
    params = [p.detach().clone() for p in model.parameters()]
    rule = _rule(gated=name != "siren")  # the additive form too
    context = rule.build_context(params, model)
    if full_maps:  # the general element-wise layout, which no traced layer needs today
        shapes = [torch.Size(F.matrix_shape(p.shape)) for p in params]
        for maps in (context.source, context.target, context.kind):
            maps[:] = [_as_full(m, shape) for m, shape in zip(maps, shapes)]
    fast = [p.clone() for p in params]
    state, fast_state = rule.init_state(params), rule.init_state(params)
    fused = FusedStep(rule, context, compiled=False)
    n = len(params)
    lrs, wds = [0.5 + 0.1 * i for i in range(n)], [0.01 * (i % 3) for i in range(n)]
    for step in range(STEPS):
        grads = _grads(params, step)
        frozen = [step % 7 == 3 and i == 0 for i in range(n)]
        state = learned_step_(rule, params, grads, state, context, lr=lrs, weight_decay=wds, frozen=frozen)
        fast_state = fused(fast, grads, fast_state, lrs, wds, frozen)
    assert _max_relative_error(fast, params) < 1e-5
    assert int(fast_state["step"]) == int(state["step"]) == STEPS
    for key in ("mom", "rms", "row", "col"):
        assert _max_relative_error(fast_state[key], state[key]) < 1e-5, key
    moved = _max_relative_error(params, [p.detach() for p in model.parameters()])
    assert moved > 1e-3, "the steps should move the parameters"


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0,
           scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    params = list(model.parameters())
    for step in range(start, start + steps):
        for p, g in zip(params, _grads(params, step)):
            p.grad = g
        if step % 5 == 2:
            params[-1].grad = None  # a parameter without a gradient this step
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _frames() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_compiled_optimizer_matches_the_reference_and_does_not_recompile(name):
    """NeuralGraphOpt(compile=True) against compile=False over 50 steps: parameter groups, weight
    decay, a parameter without gradient every few steps and a learning-rate schedule (which must
    not recompile)."""
    model, _ = build(name)
    twin = copy.deepcopy(model)
    rule = _rule()

    def optimizer(m: nn.Module, compile: bool) -> NeuralGraphOpt:
        params = list(m.parameters())
        groups = [{"params": params[:2], "lr": 0.5}, {"params": params[2:], "weight_decay": 0.1}]
        return NeuralGraphOpt(groups, lr=2.0, rule=copy.deepcopy(rule), model=m, compile=compile)

    reference, fused = optimizer(model, False), optimizer(twin, True)
    schedules = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.9) for o in (reference, fused)]
    _train(model, reference, 10, scheduler=schedules[0])
    _train(twin, fused, 10, scheduler=schedules[1])
    assert fused._fused is not None
    compiled = _frames()
    _train(model, reference, STEPS - 10, start=10, scheduler=schedules[0])
    _train(twin, fused, STEPS - 10, start=10, scheduler=schedules[1])
    assert _frames() == compiled, "a learning-rate schedule or a missing gradient recompiled the step"
    assert _max_relative_error(list(twin.parameters()), list(model.parameters())) < 1e-5
    for key in ("mom", "rms"):
        assert _max_relative_error(fused.rule_state[key], reference.rule_state[key]) < 1e-5


@pytest.mark.slow
def test_every_compiled_copy_holds_one_compilation_shared_by_same_shaped_parameters():
    """Dynamo checks a function's compilations in turn at every call; the fused step gives each
    parameter signature its own copy of the function, so every call finds its compilation first."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    model, _ = build("transformer")
    opt = NeuralGraphOpt(model.parameters(), rule=_rule(), model=model, compile=True)
    _train(model, opt, 3)
    n_params = len(list(model.parameters()))
    for specialized in (opt._fused._stats, opt._fused._update):
        copies = list(specialized._by_signature.values())
        assert 1 < len(copies) < n_params, "parameters of one shape should share a copy, other shapes not"
        codes = {fn._torchdynamo_orig_callable.__code__ for fn in copies}
        assert len(codes) == len(copies)
        assert [len(_debug_get_cache_entry_list(code)) for code in codes] == [1] * len(codes)


def check_compiled_step_commutes_with_permutations(name: str, device: torch.device | str = "cpu") -> None:
    """Three compiled steps on a network and on its hidden-permuted twin give permuted parameters."""
    model, permuted, example, graph, sigma = permuted_pair(name)
    rule = _rule(dtype=torch.float64)
    start = graph.to_flat()
    after = []
    for m in (model, permuted):
        m.to(device)
        opt = NeuralGraphOpt(m.parameters(), rule=copy.deepcopy(rule), model=m, compile=True)
        for _ in range(3):
            opt.zero_grad()
            m(example.to(device)).pow(2).mean().backward()
            opt.step()
        after.append(torch.cat([p.detach().reshape(-1) for p in m.parameters()]).cpu())
    assert (after[0] - start).abs().max() > 1e-3, "the steps should move the parameters"
    torch.testing.assert_close(after[1], permute_flat(graph, after[0], sigma), atol=1e-9, rtol=1e-9)


@pytest.mark.slow
def test_compiled_step_on_permuted_network_is_the_permuted_step():
    check_compiled_step_commutes_with_permutations("mlp")


def check_compiled_step_follows_the_reference(name: str, device: torch.device | str = "cpu") -> None:
    """``compile=True`` on ``device`` against ``compile=False`` on the CPU: 50 steps with the same
    gradients, parameters within 1e-5 relative."""
    model, _ = build(name)
    twin = copy.deepcopy(model).to(device)
    rule = _rule()
    reference = NeuralGraphOpt(model.parameters(), rule=copy.deepcopy(rule), model=model, compile=False)
    fused = NeuralGraphOpt(twin.parameters(), rule=copy.deepcopy(rule), model=twin, compile=True)
    for step in range(STEPS):
        for p, q, g in zip(model.parameters(), twin.parameters(), _grads(list(model.parameters()), step)):
            p.grad, q.grad = g, g.to(device)
        reference.step()
        fused.step()
    assert _max_relative_error([p.detach().cpu() for p in twin.parameters()], list(model.parameters())) < 1e-5


@pytest.mark.slow
def test_compiled_resume_is_bit_identical_and_nan_steps_are_skipped():
    model, _ = build("mlp")
    rule = _rule()
    opt = NeuralGraphOpt(model.parameters(), rule=rule, model=model, compile=True)
    _train(model, opt, 3)
    saved_params, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 3, start=3)

    resumed = build("mlp")[0]
    resumed.load_state_dict(saved_params)
    opt2 = NeuralGraphOpt(resumed.parameters(), rule=rule, model=resumed, compile=True)
    opt2.load_state_dict(saved_opt)
    _train(resumed, opt2, 3, start=3)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)

    before = [p.detach().clone() for p in resumed.parameters()]
    step_before = int(opt2.rule_state["step"])
    for p in resumed.parameters():
        p.grad = torch.full_like(p, float("nan"))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt2.step()
    assert all(torch.equal(a, b) for a, b in zip(before, resumed.parameters()))
    assert int(opt2.rule_state["step"]) == step_before and opt2.skipped_steps == 1


@pytest.mark.slow
def test_compiled_step_keeps_bfloat16_parameters_close_to_the_reference():
    model, _ = build("mlp")
    model = model.to(torch.bfloat16)
    twin = copy.deepcopy(model)
    rule = _rule()
    reference = NeuralGraphOpt(model.parameters(), rule=rule, model=model, compile=False)
    fused = NeuralGraphOpt(twin.parameters(), rule=rule, model=twin, compile=True)
    _train(model, reference, 10)
    _train(twin, fused, 10)
    for a, b in zip(twin.parameters(), model.parameters()):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)  # bf16 rounds at 4e-3; the two round differently


def test_compile_argument_is_checked():
    model, _ = build("mlp")
    with pytest.raises(ValueError, match="compile must be"):
        NeuralGraphOpt(model.parameters(), model=model, compile="yes")
    opt = NeuralGraphOpt(model.parameters(), rule=FFRule(), model=model, compile=True)
    with pytest.raises(RuntimeError, match="FFRule has no fused step"):
        _train(model, opt, 1)
    opt = NeuralGraphOpt(model.parameters(), rule=FFRule(), model=model, compile="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rule without a fused form is not worth a warning
        _train(model, opt, 1)
    assert opt._fused is None


def test_auto_falls_back_with_one_warning_where_compile_cannot_run(monkeypatch):
    import l2o.fused

    monkeypatch.delenv("L2O_COMPILE")
    monkeypatch.setattr(l2o.fused, "compile_unavailable", lambda device: "no C++ compiler (test)")
    model, _ = build("mlp")
    twin = copy.deepcopy(model)
    opt = NeuralGraphOpt(model.parameters(), rule=_rule(), model=model, compile="auto")
    with pytest.warns(RuntimeWarning, match="reference step.*no C\\+\\+ compiler"):
        _train(model, opt, 2)
    reference = NeuralGraphOpt(twin.parameters(), rule=_rule(), model=twin, compile=False)
    _train(twin, reference, 2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    strict = NeuralGraphOpt(model.parameters(), rule=_rule(), model=model, compile=True)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        _train(model, strict, 1)


def test_environment_turns_auto_off(monkeypatch):
    monkeypatch.setenv("L2O_COMPILE", "0")
    model, _ = build("mlp")
    opt = NeuralGraphOpt(model.parameters(), rule=_rule(), model=model)
    _train(model, opt, 1)
    assert opt.compile == "auto" and opt._fused is None


def test_a_failed_first_compile_restores_everything_and_runs_the_reference(monkeypatch):
    """Under "auto" a fused step that fails part-way (here after advancing the statistics) is
    undone, and the step the user gets is the reference step."""
    model, _ = build("mlp")
    twin = copy.deepcopy(model)
    rule = _rule()

    def broken(context):
        def step(params, grads, state, lr, weight_decay, frozen):
            state["mom"][0].add_(1.0)
            params[0].detach().add_(1.0)
            raise RuntimeError("inductor failed (test)\nmore detail")
        return step

    monkeypatch.delenv("L2O_COMPILE")
    monkeypatch.setattr(rule, "fused_step", broken)
    opt = NeuralGraphOpt(model.parameters(), rule=rule, model=model, compile="auto")
    with pytest.warns(RuntimeWarning, match="compiling it failed \\(RuntimeError: inductor failed \\(test\\)\\)"):
        _train(model, opt, 3)
    reference = NeuralGraphOpt(twin.parameters(), rule=rule, model=twin, compile=False)
    _train(twin, reference, 3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(opt.rule_state["mom"], reference.rule_state["mom"]))

    strict = NeuralGraphOpt(twin.parameters(), rule=rule, model=twin, compile=True)
    before = [p.detach().clone() for p in twin.parameters()]
    with pytest.raises(RuntimeError, match="failed to compile"):
        _train(twin, strict, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, twin.parameters()))


def test_deepcopy_of_a_fused_optimizer_makes_its_own_fused_step():
    model, _ = build("mlp")
    opt = NeuralGraphOpt(model.parameters(), rule=_rule(), model=model, compile=True)
    opt._fused_step(list(model.parameters()))  # made, not run: nothing compiles
    copied = copy.deepcopy(opt)
    assert opt._fused is not None and copied._fused is None and not copied._fused_checked
