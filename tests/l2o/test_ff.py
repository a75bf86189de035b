"""The FF baseline rule: documented Adam-like initialisation, update form, meta-gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import grad

from encoders.data import load_digits
from l2o import FFRule, learned_step


def _digits_problem(seed: int = 0):
    images, labels = load_digits()
    x, y = images[:512].flatten(1), labels[:512]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    return model, x, y


def _loss(model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    logits = torch.func.functional_call(model, dict(zip(names, params)), (x,))
    return nn.functional.cross_entropy(logits, y)


def test_init_is_adam_1e_3():
    model, x, y = _digits_problem()
    rule = FFRule()
    initial = [p.detach().clone() for p in model.parameters()]
    params = [p.clone() for p in initial]
    reference = [p.clone().requires_grad_() for p in initial]
    adam = torch.optim.Adam(reference, lr=1e-3)
    state = rule.init_state(params)
    for _ in range(15):
        grads = torch.autograd.grad(_loss(model, [p.requires_grad_() for p in params], x, y), params)
        with torch.no_grad():
            params, state = learned_step(rule, [p.detach() for p in params], list(grads), state)
        adam.zero_grad()
        _loss(model, reference, x, y).backward()
        adam.step()
    for p, q, p0 in zip(params, reference, initial):
        assert (p - p0).abs().max() > 5e-3  # moved about 15 steps of 1e-3
        torch.testing.assert_close(p, q.detach(), rtol=0, atol=2e-6)


def test_init_decreases_digits_loss():
    model, x, y = _digits_problem()
    rule = FFRule()
    params = [p.detach().clone() for p in model.parameters()]
    start = float(_loss(model, params, x, y))
    state = rule.init_state(params)
    for _ in range(60):
        params = [p.requires_grad_() for p in params]
        grads = torch.autograd.grad(_loss(model, params, x, y), params)
        with torch.no_grad():
            params, state = learned_step(rule, [p.detach() for p in params], list(grads), state, lr=10.0)
    assert float(_loss(model, params, x, y)) < 0.5 * start


def test_last_layer_zero_and_update_form():
    rule = FFRule(hidden_size=8, hidden_layers=3)
    last = rule.mlp[-1]
    assert last.weight.shape == (2, 8) and not last.weight.any() and not last.bias.any()
    assert sum(isinstance(m, nn.Linear) for m in rule.mlp) == 4
    params, grads = [torch.randn(4, 3)], [torch.randn(4, 3)]
    state = rule.init_state(params)
    base, _ = rule(params, grads, state)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([0.5, 2000.0]))
    changed, _ = rule(params, grads, state)
    # update = step_mult * (d + skip * adam) * exp(exp_mult * m) with d = 0.5, m = 2000
    adam = base[0] / rule.step_mult
    torch.testing.assert_close(changed[0], 1e-3 * (0.5 + adam) * torch.exp(torch.tensor(2.0)))


def test_skip_zero_is_plain_metz_form():
    rule = FFRule(skip=0.0)
    updates, _ = rule([torch.randn(3, 3)], [torch.randn(3, 3)], rule.init_state([torch.randn(3, 3)]))
    assert not updates[0].any()


def test_meta_gradients_reach_mlp_and_decays():
    rule = FFRule(learn_decays=True)
    params, grads = [torch.randn(6, 5), torch.randn(6)], [torch.randn(6, 5), torch.randn(6)]
    meta = {k: v.detach() for k, v in rule.named_parameters()}

    def meta_loss(meta: dict[str, torch.Tensor]) -> torch.Tensor:
        new, state = learned_step(rule, params, grads, rule.init_state(params), meta_params=meta)
        new, _ = learned_step(rule, new, grads, state, meta_params=meta)
        return sum(p.square().sum() for p in new)

    g = grad(meta_loss)(meta)
    assert g["mlp.4.weight"].abs().sum() > 0 and g["decay_logits"].abs().sum() > 0
    assert all(torch.isfinite(v).all() for v in g.values())


def test_config_round_trip_and_validation():
    rule = FFRule(hidden_size=16, momentum_decays=(0.5, 0.9, 0.99), learn_decays=True)
    assert FFRule(**rule.config()).config() == rule.config()
    assert "chunk_size" not in rule.config()
    assert [n for n, _ in FFRule().named_parameters()] == [n for n, _ in FFRule().mlp.named_parameters(prefix="mlp")]
    with pytest.raises(ValueError, match="decays must lie in"):
        FFRule(rms_decay=1.0)
    with pytest.raises(ValueError, match="exactly 3"):
        FFRule(momentum_decays=(0.9,))


def test_chunking_does_not_change_updates():
    params, grads = [torch.randn(50, 20)], [torch.randn(50, 20)]
    rule = FFRule()
    nn.init.normal_(rule.mlp[-1].weight, std=10.0)
    whole, _ = rule(params, grads, rule.init_state(params))
    rule.chunk_size = 64
    chunked, _ = rule(params, grads, rule.init_state(params))
    torch.testing.assert_close(whole[0], chunked[0], rtol=1e-4, atol=1e-7)
