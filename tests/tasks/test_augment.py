"""Weight-space augmentations of SIRENs do to the function what they say."""

from __future__ import annotations

import math

import pytest
import torch

from encoders.tasks.augment import InrAugment, drop_weights, flip_signs, transform_coordinates
from encoders.zoo import Siren, coordinate_grid
from encoders.zoo.siren import siren_param_shapes


def stacked_sirens(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    models = [Siren(hidden=(8, 8)) for _ in range(batch)]
    return {k: torch.stack([m.state_dict()[k] for m in models]) for k in siren_param_shapes((8, 8))}


def draw(params: dict[str, torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
    """``[B, P]``: every SIREN evaluated at ``coords [P, 2]``."""
    model = Siren(hidden=(8, 8))
    out = []
    for b in range(params["layers.0.weight"].shape[0]):
        model.load_state_dict({k: v[b] for k, v in params.items()})
        out.append(model(coords).squeeze(-1))
    return torch.stack(out).detach()


def test_coordinate_transform_draws_the_image_through_the_affine_map():
    params, coords = stacked_sirens(), coordinate_grid(5, 7)
    angle = torch.tensor([0.3, -0.7, 1.0])
    matrix = torch.stack([torch.stack([torch.cos(angle), -torch.sin(angle)], -1),
                          torch.stack([torch.sin(angle), torch.cos(angle)], -1)], -2) * 1.1
    shift = torch.tensor([[0.1, -0.2], [0.0, 0.25], [-0.3, 0.05]])
    moved = draw(transform_coordinates(params, matrix, shift), coords)
    for b in range(3):  # g(x) = f(A x + t)
        expected = draw({k: v[b:b + 1] for k, v in params.items()}, coords @ matrix[b].T + shift[b])
        torch.testing.assert_close(moved[b:b + 1], expected, atol=1e-5, rtol=1e-5)
    assert (moved - draw(params, coords)).abs().max() > 1e-2


def test_sign_flips_keep_the_function_and_change_the_weights():
    params, coords = stacked_sirens(), coordinate_grid(6, 6)
    generator = torch.Generator().manual_seed(1)
    signs = [torch.where(torch.rand(3, 8, generator=generator) < 0.5, -1.0, 1.0) for _ in range(2)]
    flipped = flip_signs(params, signs)
    torch.testing.assert_close(draw(flipped, coords), draw(params, coords), atol=1e-5, rtol=1e-5)
    assert not torch.equal(flipped["layers.1.weight"], params["layers.1.weight"])


def test_dropout_zeroes_weights_only_at_its_rate():
    params = stacked_sirens(batch=64)
    dropped = drop_weights(params, 0.1, torch.Generator().manual_seed(0))
    zeroed = (dropped["layers.1.weight"] == 0).float().mean()
    assert 0.08 < float(zeroed) < 0.12
    assert torch.equal(dropped["layers.1.bias"], params["layers.1.bias"])


def test_augment_draws_a_label_preserving_transform_per_inr():
    params, coords = stacked_sirens(), coordinate_grid(8, 8)
    augment = InrAugment(weight_dropout=0.0)
    out = augment(params, torch.Generator().manual_seed(3))
    assert set(out) == set(params) and all(out[k].shape == params[k].shape for k in params)
    # without dropout, the augmented INR is the original seen through some rotation/scale/shift:
    # its first layer is W A with A a scaled rotation, so the row norms scale uniformly per INR
    before, after = params["layers.0.weight"].norm(dim=-1), out["layers.0.weight"].norm(dim=-1)
    ratio = after / before
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)
    assert ((ratio[:, 0] > 0.8 - 1e-6) & (ratio[:, 0] < 1.2 + 1e-6)).all()
    assert not torch.allclose(draw(out, coords), draw(params, coords), atol=1e-3)
    assert math.isclose(InrAugment().rotation, 45.0)


def test_trainer_augments_inr_classification_batches_only_when_asked(inr_zoo):
    from encoders.tasks import FitConfig, fit
    from encoders.tasks.tasks import make_task

    task = make_task("inr-classify", inr_zoo)
    generator = torch.Generator().manual_seed(0)
    index = torch.arange(4)
    plain, augmented = task.train.batch(index), task.train.batch(index, task.augmentation(), generator)
    assert torch.equal(plain.target, augmented.target) and not torch.allclose(plain.raw, augmented.raw)
    x, _ = task.graph.features(augmented.flat[0])
    torch.testing.assert_close(augmented.graphs.x[:task.graph.num_nodes], x)
    results = fit(task, "mlp", config=FitConfig(epochs=1, augment=True), progress=False)
    assert 0.0 <= results["test_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="no training augmentations"):
        fit(task, "stats", config=FitConfig(epochs=1, augment=True), progress=False)
