"""Bad input gives clear errors."""

from __future__ import annotations

import pytest
import torch

from encoders.tasks import FitConfig, build_model, fit, make_task
from encoders.tasks.data import flatten_state_dict
from encoders.tasks.tasks import dilate
from encoders.zoo.siren import Siren


def test_task_needs_its_zoo_kind(inr_zoo, cnn_zoo) -> None:
    with pytest.raises(ValueError, match="needs a INR zoo, got a CNN zoo"):
        make_task("inr-classify", cnn_zoo)
    with pytest.raises(ValueError, match="needs a CNN zoo"):
        make_task("generalization", inr_zoo)
    with pytest.raises(ValueError, match="unknown task"):
        make_task("inr-segment", inr_zoo)


def test_weights_of_another_architecture(tasks: dict) -> None:
    task = tasks["inr-edit"]
    wider = Siren(hidden=(16, 16)).state_dict()
    with pytest.raises(ValueError, match="do not match the declared architecture"):
        flatten_state_dict(task.graph, wider)
    flat = flatten_state_dict(task.graph, Siren().state_dict())
    assert flat.shape == (task.width,)


def test_wrong_image_and_delta_shapes(tasks: dict) -> None:
    task = tasks["inr-edit"]
    with pytest.raises(ValueError, match=r"expected images \[B, 1, 8, 8\]"):
        dilate(torch.rand(2, 1, 28, 28), task.image_shape)
    with pytest.raises(ValueError, match=r"expected images"):
        dilate(torch.rand(1, 8, 8), task.image_shape)
    batch = task.train.batch(torch.arange(2))
    with pytest.raises(ValueError, match="parameter delta of shape"):
        task.edited_images(torch.zeros(2, task.width + 1), batch)


def test_bad_model_choices(tasks: dict) -> None:
    with pytest.raises(ValueError, match="unknown encoder"):
        build_model("resnet", tasks["inr-classify"])
    for encoder in ("ng-gnn", "deepsets", "mlp"):
        with pytest.raises(ValueError, match="probe features need an INR task"):
            build_model(encoder, tasks["generalization"], probes=4)
    mlp = build_model("mlp", tasks["inr-classify"], probes=4)
    with pytest.raises(ValueError, match="pass probe_net and probe_params"):
        mlp(tasks["inr-classify"].train.batch(torch.arange(2)))
    with pytest.raises(ValueError, match="cannot edit"):
        fit(tasks["inr-edit"], "stats", config=FitConfig(), progress=False)
    with pytest.raises(ValueError, match="pass the zoo"):
        fit("inr-classify", "mlp")
