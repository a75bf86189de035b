"""Each task trains: a few steps on one batch lower the loss, for every model; the stats baseline fits."""

from __future__ import annotations

import math

import pytest
import torch

from encoders.tasks import FitConfig, build_model, fit

TASK_NAMES = ("inr-classify", "inr-edit", "generalization")


@pytest.mark.parametrize("encoder", ["ng-gnn", "ng-t", "deepsets", "mlp"])
@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_loss_decreases(tasks: dict, task_name: str, encoder: str) -> None:
    task = tasks[task_name]
    torch.manual_seed(0)
    model = build_model(encoder, task, hidden=16, layers=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = task.train.batch(torch.arange(8))
    losses = []
    for _ in range(8):
        loss = task.loss(model(batch, **task.model_inputs(batch)), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("encoder", ["ng-t", "deepsets", "mlp"])
def test_probe_features_train(tasks: dict, encoder: str) -> None:
    """Every trained encoder takes probes, and they are learned: gradients reach them."""
    task = tasks["inr-classify"]
    torch.manual_seed(0)
    model = build_model(encoder, task, hidden=16, layers=1, probes=4)
    probes = next(p for n, p in model.named_parameters() if n.endswith("probes"))
    result = fit(task, encoder, config=FitConfig(epochs=1, hidden=16, layers=1, probes=4), progress=False)
    assert result["parameters"] == sum(p.numel() for p in model.parameters())
    assert 0 <= result["test_accuracy"] <= 1
    batch = task.train.batch(torch.arange(4))
    model(batch, **task.model_inputs(batch)).square().sum().backward()
    assert probes.grad is not None and bool(probes.grad.abs().sum() > 0)


@pytest.mark.parametrize("task_name", ["inr-classify", "generalization"])
def test_stats_baseline(tasks: dict, task_name: str) -> None:
    result = fit(tasks[task_name], "stats", progress=False)
    value = result[f"test_{tasks[task_name].metric}"]
    assert math.isnan(value) or -1 <= value <= 1


def test_inr_edit_targets_are_dilated_renderings(tasks: dict) -> None:
    task = tasks["inr-edit"]
    data = task.splits["test"]
    images = task.render(data.raw)
    torch.testing.assert_close(task.zoo.split("test").render(), images, atol=1e-5, rtol=0)
    torch.testing.assert_close(data.target, torch.nn.functional.max_pool2d(images, 3, 1, 1))
    assert task.unedited_mse() > 0
