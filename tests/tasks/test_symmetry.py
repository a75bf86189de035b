"""Hidden-neuron permutations: predictions are invariant, edits equivariant (and draw the same image)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from encoders.graph import NeuralGraph
from encoders.symmetry import equivariance_error, random_hidden_permutation
from encoders.tasks import WeightSet, WeightTask, build_model


def _single(task: WeightTask, graph: NeuralGraph, x: Tensor, edge_attr: Tensor):
    """The batch of one network whose standardized features are ``x``/``edge_attr``."""
    data = task.train
    flat = torch.zeros(1, data.raw.shape[1])
    flat[0, :graph.num_params] = graph.to_flat(x, edge_attr)
    target = data.target[:1]
    one = WeightSet([graph], data.standardizer.inverse(flat), target, data.standardizer)
    return one.batch(torch.arange(1))


# (encoder, dense): NG-GNN and NG-T through both their paths; DeepSets has only the sparse one
MODELS = [(e, dense) for e in ("ng-gnn", "ng-t") for dense in (True, False)] + [("deepsets", False)]
CASES = [(t, e, dense, 0) for t in ("inr-classify", "generalization") for e, dense in MODELS]
CASES += [("inr-classify", e, dense, 4) for e, dense in MODELS]  # probe features


@pytest.mark.parametrize(("task_name", "encoder", "dense", "probes"), CASES)
@torch.no_grad()
def test_prediction_invariant(tasks: dict, task_name: str, encoder: str, dense: bool, probes: int) -> None:
    task = tasks[task_name]
    torch.manual_seed(0)
    model = build_model(encoder, task, hidden=16, layers=2, probes=probes, dense=dense).eval()
    index = len(task.train) - 1
    graph = task.train.structures[index]
    x, edge_attr = graph.features(task.train.flat[index, :graph.num_params])

    def fn(x: Tensor, e: Tensor):
        batch = _single(task, graph, x, e)
        return None, None, model(batch, **task.model_inputs(batch))

    sigma = random_hidden_permutation(graph, torch.Generator().manual_seed(1))
    assert not torch.equal(sigma, torch.arange(graph.num_nodes))
    assert equivariance_error(fn, graph, sigma, x, edge_attr).max() < 1e-4


@pytest.mark.parametrize(("encoder", "dense"), MODELS)
@torch.no_grad()
def test_edit_equivariant(tasks: dict, encoder: str, dense: bool) -> None:
    task = tasks["inr-edit"]
    torch.manual_seed(0)
    model = build_model(encoder, task, hidden=16, layers=2, dense=dense).eval()
    model.readout.scale.fill_(1.0)  # an edit large enough to matter
    graph = task.graph
    x, edge_attr = graph.features(task.train.flat[0, :graph.num_params])

    def fn(x: Tensor, e: Tensor):
        batch = _single(task, graph, x, e)
        delta = model(batch)
        node_delta, edge_delta = graph.features(delta[0])
        return node_delta, edge_delta, task.edited_images(delta, batch)

    sigma = random_hidden_permutation(graph, torch.Generator().manual_seed(2))
    error = equivariance_error(fn, graph, sigma, x, edge_attr)
    assert error.max() < 1e-4, error
