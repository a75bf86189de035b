"""NeuralGraphOpt: the torch.optim shell over learned_step."""

from __future__ import annotations

import copy
import io
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

from l2o import FFRule, NeuralGraphOpt, NeuralGraphRule, learned_step
from l2o.hub import from_pretrained
from l2o.optim import DEFAULT_RULE


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=gen), torch.randn(16, 3, generator=gen)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    x, y = _batch(seed)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


class SpyRule(FFRule):
    """FFRule that records its build_context calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[torch.Tensor], nn.Module | None]] = []

    def build_context(self, params, model=None):
        self.calls.append((list(params), model))
        return None


def _random_head(rule: nn.Module) -> nn.Module:
    """A non-trivial learned correction (both shipped rules start as Adam)."""
    torch.manual_seed(5)
    last = rule.mlp[-1] if isinstance(rule, FFRule) else rule.head_out
    nn.init.normal_(last.weight, std=100.0 if isinstance(rule, FFRule) else 1.0)
    return rule


@pytest.mark.parametrize("rule", [FFRule(), NeuralGraphRule(chunk_size=5)], ids=["ff", "neural-graph-in-blocks"])
def test_class_equals_functional_path_exactly(rule):
    """The in-place optimizer step (blocks, statistics advanced in place) gives learned_step's bits."""
    model = _model()
    rule = _random_head(rule)
    fast, slow = model[0].parameters(), model[2].parameters()
    opt = NeuralGraphOpt([{"params": fast, "lr": 0.5}, {"params": slow, "weight_decay": 0.1}], lr=2.0, rule=rule,
                         model=model)
    params = [p.detach().clone() for p in model.parameters()]
    lrs, wds = [0.5, 0.5, 2.0, 2.0], [0.0, 0.0, 0.1, 0.1]
    context = rule.build_context(params, model)
    state = rule.init_state(params)
    x, y = _batch()
    for step in range(4):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if step == 2:
            model[2].bias.grad = None  # a parameter without gradient: untouched, its statistics kept
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
        previous = params[3].clone(), {key: state[key][3].clone() for key in ("mom", "rms", "row", "col")}
        opt.step()
        with torch.no_grad():
            params, state = learned_step(rule, params, grads, state, context, lr=lrs, weight_decay=wds)
        if step == 2:
            params[3] = previous[0]
            for key, value in previous[1].items():
                state[key][3] = value
        assert all(torch.equal(p, q) for p, q in zip(params, model.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(state["mom"], opt.rule_state["mom"]))
    assert int(opt.rule_state["step"]) == 4
    with pytest.raises(ValueError, match="3 values of lr for 4 parameters"):
        learned_step(rule, params, grads, state, lr=lrs[:3])


def test_state_dict_round_trip_is_bit_identical():
    model = _model()
    opt = NeuralGraphOpt(model.parameters(), lr=3.0, weight_decay=0.01, model=model)
    _train(model, opt, 5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    _train(model, opt, 5, seed=2)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain tensors and containers only
    resumed = _model(seed=7)
    resumed.load_state_dict(saved["model"])
    opt2 = NeuralGraphOpt(resumed.parameters(), lr=0.1, model=resumed)
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["lr"] == 3.0 and int(opt2.rule_state["step"]) == 5
    _train(resumed, opt2, 5, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))


def test_load_state_dict_rejects_other_rule_or_model():
    model = _model()
    state = NeuralGraphOpt(model.parameters()).state_dict()
    with pytest.raises(ValueError, match="made with rule"):
        NeuralGraphOpt(model.parameters(), rule=FFRule(hidden_size=16)).load_state_dict(state)
    with pytest.raises(ValueError, match="different model"):
        NeuralGraphOpt(nn.Linear(6, 3).parameters()).load_state_dict(state)
    NeuralGraphOpt(model.parameters(), model=model).load_state_dict(state)  # names unknown when saved: fine
    named = NeuralGraphOpt(model.parameters(), model=model).state_dict()
    renamed = nn.Sequential(OrderedDict(a=nn.Linear(6, 8), act=nn.Tanh(), b=nn.Linear(8, 3)))
    with pytest.raises(ValueError, match="different parameters.*'a.weight'"):
        NeuralGraphOpt(renamed.parameters(), model=renamed).load_state_dict(named)
    with pytest.raises(ValueError, match="not a NeuralGraphOpt state dict"):
        NeuralGraphOpt(model.parameters()).load_state_dict(torch.optim.Adam(model.parameters()).state_dict())


def test_lr_scales_step_and_scheduler_drives_it():
    steps = {}
    for lr in (1.0, 2.0):
        model = _model()
        before = [p.detach().clone() for p in model.parameters()]
        _train(model, NeuralGraphOpt(model.parameters(), lr=lr), 1)
        steps[lr] = [p.detach() - b for p, b in zip(model.parameters(), before)]
    for a, b in zip(steps[1.0], steps[2.0]):
        torch.testing.assert_close(2 * a, b)

    model = _model()
    opt = NeuralGraphOpt(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 if epoch < 3 else 0.0)
    x, y = _batch()
    history = []
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        sched.step()
        history.append(any(not torch.equal(b, p) for b, p in zip(before, model.parameters())))
    assert history == [True, True, True, False, False]
    assert opt.param_groups[0]["initial_lr"] == 1.0


def test_nonfinite_gradients_skip_the_step_and_warn_once():
    model = _model()
    opt = NeuralGraphOpt(model.parameters(), model=model)
    _train(model, opt, 2)
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for bad in (float("nan"), float("inf")):
            opt.zero_grad()
            nn.functional.mse_loss(model(_batch()[0]), _batch()[1]).backward()
            model[2].bias.grad[0] = bad
            opt.step()
    assert opt.skipped_steps == 2
    assert len([w for w in caught if "non-finite" in str(w.message)]) == 1
    assert "'2.bias'" in str(caught[0].message)
    assert all(torch.equal(p, q) for p, q in zip(params, model.parameters()))
    after = opt.state_dict()["state"]["rule_state"]
    assert all(torch.equal(a, b) for a, b in zip(after["mom"], state["state"]["rule_state"]["mom"]))
    assert int(after["step"]) == 2 and opt.state_dict()["state"]["skipped_steps"] == 2


@pytest.mark.parametrize("rule", ["ff", None])
def test_parameters_without_grad_are_untouched(rule):
    model = _model()
    opt = NeuralGraphOpt(model.parameters(), rule=rule)
    reference_model = _model()
    reference = NeuralGraphOpt(reference_model[2].parameters(), rule=rule)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    x, y = _batch()
    for m, o in ((model, opt), (reference_model, reference)):
        for _ in range(3):
            o.zero_grad()
            nn.functional.mse_loss(m[2](m[1](m[0](x).detach())), y).backward()
            o.step()
    assert all(p.grad is None for p in model[0].parameters())
    assert all(torch.equal(a, b) for a, b in zip(frozen, model[0].parameters()))
    per_param = [v for v in opt.rule_state.values() if isinstance(v, list)]
    assert not any(v[i].any() for v in per_param for i in (0, 1)), "the frozen layer's statistics never advanced"
    if rule == "ff":  # a per-parameter rule steps the rest as if the frozen layer did not exist
        assert all(torch.equal(a, b) for a, b in zip(model[2].parameters(), reference_model[2].parameters()))
    assert int(opt.rule_state["step"]) == 3

    opt.zero_grad()
    assert opt.step() is None and int(opt.rule_state["step"]) == 3  # no gradients at all: no-op


def test_bad_inputs_raise_naming_the_parameter():
    model = _model()
    with pytest.raises(TypeError, match="'count'.*torch.int64"):
        NeuralGraphOpt([("count", torch.zeros(3, dtype=torch.int64))])
    with pytest.raises(TypeError, match="complex64"):
        NeuralGraphOpt([torch.zeros(3, dtype=torch.complex64, requires_grad=True)])
    with pytest.raises(ValueError, match="one device.*meta"):
        NeuralGraphOpt([nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, device="meta"))])
    with pytest.raises(ValueError, match="listed twice"), pytest.warns(UserWarning, match="duplicate"):
        NeuralGraphOpt([model[0].weight, model[0].weight])
    with pytest.raises(ValueError, match="lr must be >= 0"):
        NeuralGraphOpt(model.parameters(), lr=-1.0)
    opt = NeuralGraphOpt(model.parameters(), model=model)
    model[0].weight.grad = torch.zeros_like(model[0].weight).to_sparse()
    with pytest.raises(TypeError, match="sparse.*'0.weight'"):
        opt.step()
    model[0].weight.grad_dtype = None
    model[0].weight.grad = torch.zeros(model[0].weight.shape, dtype=torch.complex64)
    with pytest.raises(TypeError, match="'0.weight'.*complex64"):
        opt.step()


def test_add_param_group_rebuilds_context_and_keeps_state():
    model = _model()
    rule = SpyRule()
    opt = NeuralGraphOpt([{"params": model[0].parameters()}, {"params": [model[2].weight]}], rule=rule, model=model)
    assert len(rule.calls) == 1 and rule.calls[0][1] is model
    assert [id(p) for p in rule.calls[0][0]] == [id(p) for p in list(model.parameters())[:3]]
    _train(model, opt, 2)
    mom = [m.clone() for m in opt.rule_state["mom"]]
    opt.add_param_group({"params": [model[2].bias], "lr": 0.5})
    assert len(rule.calls) == 2 and [id(p) for p in rule.calls[1][0]] == [id(p) for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(mom, opt.rule_state["mom"]))
    assert len(opt.rule_state["mom"]) == 4 and not opt.rule_state["mom"][3].any()
    assert int(opt.rule_state["step"]) == 2
    _train(model, opt, 1)
    assert opt.rule_state["mom"][3].any() and int(opt.rule_state["step"]) == 3
    with pytest.raises(TypeError):
        opt.add_param_group({"params": [torch.zeros(2, dtype=torch.int32)]})
    assert len(opt.param_groups) == 3


def test_rule_argument_forms_maximize_closure_and_deepcopy():
    model = _model()
    assert isinstance(NeuralGraphOpt(model.parameters()).rule, type(from_pretrained(DEFAULT_RULE)))
    assert isinstance(NeuralGraphOpt(model.parameters(), rule="ff").rule, FFRule)
    with pytest.raises(TypeError, match="rule must be"):
        NeuralGraphOpt(model.parameters(), rule=3)

    up, down = _model(), _model()
    x, y = _batch()
    for m, maximize in ((up, True), (down, False)):
        opt = NeuralGraphOpt(m.parameters(), maximize=maximize)

        def closure(m=m, opt=opt):
            opt.zero_grad()
            loss = nn.functional.mse_loss(m(x), y)
            loss.backward()
            return loss

        assert isinstance(opt.step(closure), torch.Tensor)
    assert nn.functional.mse_loss(up(x), y) > nn.functional.mse_loss(down(x), y)

    clone = copy.deepcopy(opt)
    assert torch.equal(clone.rule_state["mom"][0], opt.rule_state["mom"][0]) and clone.rule is not opt.rule


def test_bfloat16_parameters():
    model = _model().to(torch.bfloat16)
    opt = NeuralGraphOpt(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _batch()
    for _ in range(80):  # the default rule's first steps (Prodigy's d from 1e-6) are below bf16 rounding
        opt.zero_grad()
        nn.functional.mse_loss(model(x.bfloat16()), y.bfloat16()).backward()
        opt.step()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(t.dtype == torch.float32 for t in opt.rule_state["mom"] + opt.rule_state["rms"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
