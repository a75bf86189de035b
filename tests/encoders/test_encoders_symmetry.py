"""NG-GNN and NG-T respect hidden-neuron permutations and break the false input/output symmetry.

All errors are measured in float32 with ``equivariance_error``; the largest seen is ~4e-6 (NG-GNN
edge outputs, from the summation order of the aggregations), so the 1e-5 bound holds without
switching to float64.
"""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from encoders import NeuralGraph, Role
from encoders.symmetry import equivariance_error, random_hidden_permutation
from tests.encoders.conftest import EncoderWithHeads

SYMMETRY_NETWORKS = ["mlp", "siren", "cnn_mixed_kernels", "resnet", "transformer"]


def on_features(model: EncoderWithHeads, graph: NeuralGraph):
    """``fn(x, edge_attr)`` for ``equivariance_error``: the graph with new features, through the model."""

    def fn(x: torch.Tensor, edge_attr: torch.Tensor):
        with torch.no_grad():
            return model(Batch.from_data_list([graph.to_pyg(x=x, edge_attr=edge_attr)]))

    return fn


@pytest.mark.parametrize("name", SYMMETRY_NETWORKS)
def test_hidden_permutations_are_symmetries(model, graphs, name):
    graph = graphs[name]
    sigma = random_hidden_permutation(graph, torch.Generator().manual_seed(1))
    assert (sigma != torch.arange(graph.num_nodes)).any()
    err = equivariance_error(on_features(model, graph), graph, sigma)
    assert err.node <= 1e-5 and err.edge <= 1e-5 and err.invariant <= 1e-5, err


def swap(graph: NeuralGraph, role: Role) -> torch.Tensor:
    """A node permutation exchanging the first two neurons of ``role``: a symmetry of the graph's
    structure (so without positional embeddings the encoders could not tell), but not of the
    network, whose inputs and outputs have an order."""
    first, second = (graph.node_role == role).nonzero().squeeze(1)[:2].tolist()
    sigma = torch.arange(graph.num_nodes)
    sigma[first], sigma[second] = second, first
    return sigma


@pytest.mark.parametrize(("name", "role"), [("mlp", Role.INPUT), ("mlp", Role.OUTPUT), ("resnet", Role.INPUT),
                                            ("cnn_mixed_kernels", Role.OUTPUT)])
def test_input_and_output_permutations_change_the_output(model, graphs, name, role):
    graph = graphs[name]
    err = equivariance_error(on_features(model, graph), graph, swap(graph, role))
    assert err.invariant > 1e-3 and err.node > 1e-3, err
