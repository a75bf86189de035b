"""NeuralGraphOpt with autocast (bf16, fp16) and ``torch.amp.GradScaler`` on CPU."""

from __future__ import annotations

import amp_loop
import pytest
import torch
from toy import full_loss, loss_fn, make_dataset, make_model

from l2o import NeuralGraphOpt
from tests.integrations.helpers import assert_same, params_of, tensor_leaves

BATCH = make_dataset(32).tensors


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_example_trains_under_autocast(precision):
    model = amp_loop.main(precision, steps=10)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert full_loss(model) < full_loss(make_model())


def test_grad_scaler_unscales_once_and_skips_overflowing_steps():
    model, twin = make_model(), make_model()
    opt, twin_opt = NeuralGraphOpt(model.parameters(), model=model), NeuralGraphOpt(twin.parameters(), model=twin)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def scaled_backward() -> None:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = loss_fn(model, BATCH)
        scaler.scale(loss).backward()

    loss_fn(twin, BATCH).backward()  # float32 reference gradients
    scaled_backward()
    scaler.unscale_(opt)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-2, atol=1e-3)
        q.grad = p.grad.clone()
    scaler.step(opt)  # must not unscale again
    scaler.update()
    twin_opt.step()
    assert_same(params_of(model), params_of(twin))

    scaled_backward()
    model[2].weight.grad[0, 0] = float("inf")
    params, state = params_of(model), tensor_leaves(opt.state_dict())
    scaler.step(opt)
    scaler.update()
    assert_same(params, params_of(model))
    assert_same(state, tensor_leaves(opt.state_dict()))
    assert scaler.get_scale() == 2.0**9 and opt.skipped_steps == 0  # the scaler skipped it, not the optimizer
