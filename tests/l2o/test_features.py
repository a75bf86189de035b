"""Optimizer statistics and per-element features (l2o.features)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import grad, vmap

from l2o import features as F

SHAPES = [(6, 3, 3, 3), (5, 7), (5,), ()]


def _run(shapes=SHAPES, steps: int = 3, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    state = F.init_stats(params)
    for _ in range(steps):
        grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
        state = F.update_stats(params, grads, state)
    return params, grads, state


def test_feature_names_and_count():
    assert F.NUM_FEATURES == len(F.FEATURE_NAMES) == 39
    assert (F.NUM_STAT_FEATURES, F.NUM_TIME_FEATURES) == (28, 11)
    assert len(set(F.FEATURE_NAMES)) == F.NUM_FEATURES


def test_features_shapes_finite_and_normalised():
    params, grads, state = _run()
    feats = F.element_features(params, grads, state)
    assert [f.shape for f in feats] == [(p.numel(), F.NUM_FEATURES) for p in params]
    for f, p in zip(feats, params):
        assert torch.isfinite(f).all()
        if p.numel() > 1:
            rms = f[:, : F.NUM_STAT_FEATURES].square().mean(dim=0).sqrt()
            torch.testing.assert_close(rms, torch.ones_like(rms))
        expected_time = torch.tanh(3 / torch.tensor(F.TIMESCALES) - 1)
        torch.testing.assert_close(f[:, F.NUM_STAT_FEATURES :], expected_time.expand(p.numel(), -1))


def test_feature_values_match_definitions():
    params, grads, state = _run(shapes=[(4, 6)])
    raw = {}
    f = F.element_features(params, grads, state)[0]
    g, p = grads[0].reshape(-1), params[0].reshape(-1)
    m, v = state["mom"][0].reshape(3, -1), state["rms"][0].reshape(-1)
    row, col = state["row"][0], state["col"][0]
    vhat = (row[:, :, None] * col[:, None, :] / row.mean(dim=1)[:, None, None]).reshape(3, -1)
    raw["g"], raw["p"], raw["m1"], raw["v"] = g, p, m[1], v
    raw["m2/sqrt(v)"] = m[2] / (v + F.EPS).sqrt()
    raw["g/sqrt(vhat0)"] = g / vhat[0].sqrt()
    raw["row1"] = row[1].repeat_interleave(6)
    raw["col2"] = col[2].repeat(4)
    raw["m0/sqrt(vhat0)"] = m[0] / vhat[0].sqrt()
    for name, value in raw.items():
        expected = value / value.square().mean().sqrt()
        torch.testing.assert_close(f[:, F.FEATURE_NAMES.index(name)], expected, msg=name)


def test_statistics_are_emas_and_conv_is_out_by_rest():
    params = [torch.randn(4, 2, 3, 3)]
    g1, g2 = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    state = F.update_stats(params, [g2], F.update_stats(params, [g1], F.init_stats(params)))
    assert int(state["step"]) == 2
    torch.testing.assert_close(state["mom"][0][0], 0.9 * 0.1 * g1 + 0.1 * g2)
    torch.testing.assert_close(state["rms"][0], 0.999 * 0.001 * g1**2 + 0.001 * g2**2)
    assert F.matrix_shape((4, 2, 3, 3)) == (4, 18)
    assert state["row"][0].shape == (3, 4) and state["col"][0].shape == (3, 18)
    sq1, sq2 = g1.reshape(4, 18) ** 2, g2.reshape(4, 18) ** 2
    torch.testing.assert_close(state["col"][0][2], 0.999 * 0.001 * sq1.mean(0) + 0.001 * sq2.mean(0))
    torch.testing.assert_close(state["row"][0][0], 0.9 * 0.1 * sq1.mean(1) + 0.1 * sq2.mean(1))


def test_chunked_features_equal_unchunked():
    params, grads, state = _run(shapes=[(40, 13), (7,)])
    whole = F.element_features(params, grads, state)
    chunked = F.element_features(params, grads, state, chunk_size=50)
    blocks = list(F.feature_chunks(params[0], grads[0], F.tensor_stats(state, 0), state["step"], 50))
    assert len(blocks) == 14 and blocks[-1][1] == 40 * 13
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_pure_and_zero_gradients_finite():
    params = [torch.randn(3, 4), torch.randn(4), torch.randn(0, 3)]
    zeros = [torch.zeros_like(p) for p in params]
    state = F.init_stats(params)
    before = [t.clone() for t in state["mom"]]
    new = F.update_stats(params, zeros, state)
    assert all(torch.equal(a, b) for a, b in zip(before, state["mom"])) and int(state["step"]) == 0
    for f in F.element_features(params, zeros, new):
        assert torch.isfinite(f).all()
    assert all(torch.isfinite(t).all() for key in ("row", "col") for t in new[key])
    assert F.element_features(params, zeros, new)[2].shape == (0, F.NUM_FEATURES)


def test_state_bytes_per_element():
    param = torch.zeros(512, 768, dtype=torch.bfloat16)
    state = F.init_stats([param])
    tensors = [state["step"]] + [v[0] for k, v in state.items() if k != "step"]
    assert all(t.dtype in (torch.float32, torch.int64) for t in tensors)
    per_element = sum(t.numel() * t.element_size() for t in tensors) / param.numel()
    assert per_element <= 16 + 12 * (512 + 768) / param.numel() + 1e-3
    assert per_element < 16.1


def test_low_precision_params_keep_float32_statistics():
    params, grads, state = _run(dtype=torch.bfloat16)
    assert all(t.dtype == torch.float32 for key in ("mom", "rms", "row", "col") for t in state[key])
    assert all(f.dtype == torch.float32 for f in F.element_features(params, grads, state))


def test_differentiable_in_decays_and_grads_under_torch_func():
    params = [torch.randn(3, 4)]
    g0 = torch.randn(3, 4)

    def loss(decay_m: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        decays = F.Decays(momentum=decay_m, rms=0.999, factored=(0.9, 0.99, 0.999))
        state = F.update_stats(params, [g], F.update_stats(params, [g], F.init_stats(params), decays), decays)
        return F.element_features(params, [g], state)[0][:, 2:6].sum() + state["mom"][0].sum()

    d_decay, d_g = grad(loss, argnums=(0, 1))(torch.tensor([0.9, 0.99, 0.999]), g0)
    assert torch.isfinite(d_decay).all() and d_decay.abs().sum() > 0
    assert torch.isfinite(d_g).all() and d_g.abs().sum() > 0
    batched = vmap(lambda g: F.element_features(params, [g], F.update_stats(params, [g], F.init_stats(params)))[0])
    assert batched(torch.randn(5, 3, 4)).shape == (5, 12, F.NUM_FEATURES)


def test_adam_direction_bias_correction():
    mom, rms = torch.tensor([0.1]), torch.tensor([0.001])
    d = F.adam_direction(mom, rms, torch.tensor(1))
    torch.testing.assert_close(d, torch.tensor([1.0]) / (1 + 1e-8))
    assert math.isclose(float(F.adam_direction(mom, rms, torch.tensor(1), eps=0.0)), 1.0, rel_tol=1e-6)


def test_update_stats_rejects_length_mismatch():
    params = [torch.zeros(2)]
    with pytest.raises(ValueError, match="1 parameters, 2 gradients"):
        F.update_stats(params, [torch.zeros(2), torch.zeros(2)], F.init_stats(params))


def test_feature_scales_of_large_tensors_are_accurate():
    """Above 65k elements the scales' sums of squares come from blocks: torch's float32 norm of a
    multi-million-element tensor is off by ~2e-4 relative, which the fused step (accurate sums)
    would then differ from."""
    torch.manual_seed(0)
    param, grad = torch.randn(1024, 1024), torch.randn(1024, 1024) * 1e-2
    stats = F.tensor_stats(F.update_stats([param], [grad], F.init_stats([param])), 0)
    exact = torch.stack([x.double().square().sum() for x in (grad, param, *stats.mom)])
    exact = exact.div(param.numel()).add(1e-30).rsqrt()
    torch.testing.assert_close(F.compact_scales(param, grad, stats).double(), exact, rtol=1e-6, atol=0)
