"""The Siren module and batched SIREN fitting."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from encoders.data import load_mnist5k
from encoders.zoo import InrConfig, Siren, coordinate_grid, fit_sirens, psnr
from encoders.zoo.inr_fit import RECIPES
from encoders.zoo.siren import siren_init_, siren_param_shapes
from tests.zoo.conftest import FAST


def test_siren_keys_shapes_and_init_bounds() -> None:
    torch.manual_seed(0)
    model = Siren(hidden=(32, 32), w0=30.0)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == siren_param_shapes((32, 32), 2, 1)
    assert list(shapes) == [f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    assert model.layers[0].weight.abs().max() <= 1 / 2
    assert model.layers[1].weight.abs().max() <= math.sqrt(6 / 32) / 30
    assert model.layers[1].bias.abs().max() <= 1 / math.sqrt(32)
    assert Siren(**model.config()).config() == model.config()


def test_siren_is_traceable_and_offsets_output() -> None:
    model = Siren(hidden=(8,), offset=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    coords = coordinate_grid(3, 4)
    assert torch.allclose(model(coords), torch.full((12, 1), 0.5))
    traced = torch.fx.symbolic_trace(model)
    assert torch.equal(traced(coords), model(coords))


def test_coordinate_grid_is_column_row_in_minus_one_one() -> None:
    grid = coordinate_grid(2, 3)  # pixels row-major; x follows the column, y the row
    assert grid.tolist() == [[-1, -1], [0, -1], [1, -1], [-1, 1], [0, 1], [1, 1]]


def test_fit_reaches_psnr_on_mnist_and_digits(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    mnist = load_mnist5k()[0][:4]
    _, mnist_psnr = fit_sirens(mnist, [0, 1, 2, 3], InrConfig(compile=False))  # the default 80 steps
    assert mnist_psnr.min() > 28 and mnist_psnr.median() > 30, mnist_psnr
    _, digit_psnr = fit_sirens(digits[0][:4], [0, 1, 2, 3], FAST)
    assert digit_psnr.min() > 35, digit_psnr


def test_fitted_weights_in_a_siren_module_redraw_the_image(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    images = digits[0][:3]
    params, fit_psnr = fit_sirens(images, [5, 6, 7], FAST)
    model = Siren(**FAST.siren_kwargs(1))
    model.load_state_dict({k: v[1] for k, v in params.items()})
    drawn = model(coordinate_grid(8, 8)).detach().reshape(1, 1, 8, 8)
    assert torch.allclose(psnr(drawn, images[1:2]), fit_psnr[1:2], atol=1e-3)


def test_fit_is_deterministic_and_independent_of_the_batch(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    images = digits[0][:3]
    one, _ = fit_sirens(images, [1, 2, 3], FAST)
    again, _ = fit_sirens(images, [1, 2, 3], FAST)
    alone, _ = fit_sirens(images[1:2], [2], FAST)
    other, _ = fit_sirens(images, [1, 9, 3], FAST)
    for key in one:
        assert torch.equal(one[key], again[key])
        assert torch.allclose(one[key][1], alone[key][0], atol=1e-5)
    assert not torch.allclose(one["layers.1.weight"][1], other["layers.1.weight"][1])


def test_value_range_and_offset_are_configurable(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    config = InrConfig(hidden=(24, 24), offset=0.0, value_range=(-1.0, 1.0), steps=60, compile=False)
    params, fit_psnr = fit_sirens(digits[0][:2], [0, 1], config)
    assert params["layers.0.weight"].shape == (2, 24, 2) and fit_psnr.min() > 30


@pytest.mark.parametrize("bad", [torch.rand(3, 8, 8), torch.rand(2, 1, 8, 8) * 2, torch.zeros(2, 1, 4, 4).long()])
def test_wrong_images_are_rejected(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="images|intensities"):
        fit_sirens(bad, list(range(len(bad))), FAST)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="value_range"):
        InrConfig(value_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="hidden"):
        Siren(hidden=())


@pytest.mark.slow
def test_compiled_fit_matches_eager(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """torch.compile path (10-30 s the first time, cached on disk afterwards)."""
    images = digits[0][:2]
    eager, eager_psnr = fit_sirens(images, [0, 1], InrConfig(steps=20, compile=False))
    compiled, compiled_psnr = fit_sirens(images, [0, 1], InrConfig(steps=20, compile=True))
    assert torch.allclose(compiled_psnr, eager_psnr, atol=0.1)
    for key in eager:
        assert torch.allclose(compiled[key], eager[key], atol=1e-3)


def test_dwsnets_init_is_low_frequency_with_zero_sine_biases() -> None:
    params = [torch.empty(s) for s in siren_param_shapes((32, 32), 2, 1).values()]
    siren_init_(params, 30.0, torch.Generator().manual_seed(0), scheme="dwsnets")
    w1, b1, w2, b2, w3, b3 = params
    assert 0.05 < w1.abs().max() <= math.sqrt(6 / 2) / 30  # not SIREN's U(-1/2, 1/2) first layer
    assert 0.013 < w2.abs().max() <= math.sqrt(6 / 32) / 30
    assert not b1.any() and not b2.any()
    assert 0 < b3.abs().max() <= 1 / math.sqrt(32) and 0.1 < w3.abs().max() <= 1 / math.sqrt(32)  # nn.Linear
    with pytest.raises(ValueError, match="unknown SIREN init"):
        siren_init_(params, 30.0, scheme="random")


def test_early_stop_keeps_each_sirens_weights_from_when_it_reached_the_target(digits) -> None:
    images = digits[0][:3]
    config = InrConfig(steps=200, lr=5e-4, init="dwsnets", compile=False)
    full, full_psnr = fit_sirens(images, [1, 2, 3], config)
    target = float(full_psnr.min()) - 3.0  # every SIREN passes it well before the end
    stopped, stopped_psnr = fit_sirens(images, [1, 2, 3], replace(config, target_psnr=target))
    assert (stopped_psnr >= target).all() and (stopped_psnr < full_psnr).all()
    # each SIREN stops on its own: fitted alone, the second one stops at the same weights (to the
    # rounding of a batch of 1 against a batch of 3)
    alone, _ = fit_sirens(images[1:2], [2], replace(config, target_psnr=target))
    for key in stopped:
        torch.testing.assert_close(alone[key][0], stopped[key][1], atol=1e-5, rtol=1e-4)
    assert replace(config, **RECIPES["dwsnets"]).steps == 1000


def test_bad_init_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown init"):
        InrConfig(init="random")
