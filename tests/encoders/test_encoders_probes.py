"""Probe features: the right activations reach the right nodes, gradients reach the probes, off is off."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import stack_module_state
from torch_geometric.data import Batch

from encoders import NeuralGraph, NGGNNConfig, NGTransformer, NGTransformerConfig
from encoders.probes import ProbeFeatures, layer_activations
from encoders.symmetry import equivariance_error, random_hidden_permutation
from tests.encoders.networks import Sine


def sirens(count: int) -> list[nn.Sequential]:
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(2, 8), Sine(), nn.Linear(8, 8), Sine(), nn.Linear(8, 1)) for _ in range(count)]


def encoder(probes: int) -> NGTransformer:
    torch.manual_seed(0)
    return NGTransformer(NGTransformerConfig(node_features=1, edge_features=1, hidden=16, layers=2, probes=probes))


def test_layer_activations_follow_the_network():
    nets = sirens(3)
    params, _ = stack_module_state(nets)
    probes = torch.rand(5, 2) * 2 - 1
    acts = layer_activations(nets[0], params, probes)
    assert [tuple(a.shape) for a in acts] == [(3, 5, 2), (3, 5, 8), (3, 5, 8), (3, 5, 1)]
    net = nets[1]
    with torch.no_grad():
        torch.testing.assert_close(acts[1][1], net[1](net[0](probes)))
        torch.testing.assert_close(acts[3][1], net(probes))


def test_node_values_map_neurons_to_their_nodes():
    nets = sirens(2)
    graphs = [NeuralGraph.from_module(n) for n in nets]
    data = Batch.from_data_list([g.to_pyg() for g in graphs])
    params, _ = stack_module_state(nets)
    probe = ProbeFeatures(num_probes=4, input_dim=2, hidden=16)
    values = probe.node_values(data, nets[0], params)  # [N, K]
    acts = layer_activations(nets[0], params, probe.probes)
    for node in range(data.num_nodes):
        b, depth, index = int(data.batch[node]), int(data.node_depth[node]), int(data.node_index[node])
        assert torch.equal(values[node], acts[depth][b, :, index])


def test_gradients_reach_the_probes():
    nets = sirens(3)
    data = Batch.from_data_list([NeuralGraph.from_module(n).to_pyg() for n in nets])
    model = encoder(probes=4)
    x, e = model(data, probe_net=nets[0], probe_params=stack_module_state(nets)[0])
    (x.square().mean() + e.square().mean()).backward()
    grad = model.probes.probes.grad
    assert grad is not None and grad.abs().sum() > 0 and torch.isfinite(grad).all()


def test_probe_features_keep_the_symmetry():
    net = sirens(1)[0]
    graph = NeuralGraph.from_module(net)
    model = encoder(probes=4).eval()

    def fn(x, edge_attr):
        params = {k: v.unsqueeze(0) for k, v in graph.to_state_dict(x=x, edge_attr=edge_attr).items()}
        data = Batch.from_data_list([graph.to_pyg(x=x, edge_attr=edge_attr)])
        with torch.no_grad():
            hx, he = model(data, probe_net=net, probe_params=params)
        return hx, he, None

    err = equivariance_error(fn, graph, random_hidden_permutation(graph, torch.Generator().manual_seed(0)))
    assert err.node <= 1e-5 and err.edge <= 1e-5, err


def test_disabled_probes_cost_nothing_and_refuse_probe_inputs():
    nets = sirens(2)
    data = Batch.from_data_list([NeuralGraph.from_module(n).to_pyg() for n in nets])
    off = encoder(probes=0)
    assert off.probes is None and not any("probe" in name for name, _ in off.named_parameters())
    off(data)
    with pytest.raises(ValueError, match="probe features are disabled"):
        off(data, probe_net=nets[0], probe_params=stack_module_state(nets)[0])
    with pytest.raises(ValueError, match="pass probe_net and probe_params"):
        encoder(probes=4)(data)


def test_probes_reject_networks_they_cannot_map():
    nets = sirens(2)
    data = Batch.from_data_list([NeuralGraph.from_module(n).to_pyg() for n in nets])
    probe = ProbeFeatures(num_probes=4, input_dim=2, hidden=16)
    with pytest.raises(ValueError, match="nn.Sequential"):
        probe(data, nn.ModuleList(nets[0]), dict(nets[0].named_parameters()))
    wider = nn.Sequential(nn.Linear(2, 4), Sine(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="do not match the probed network"):
        probe(data, wider, stack_module_state([wider, wider])[0])
    with pytest.raises(ValueError, match="2 graphs but the probe parameters 3"):
        probe(data, nets[0], stack_module_state(sirens(3))[0])
    with pytest.raises(ValueError, match="LayerNorm with parameters"):
        layer_activations(nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3)), {}, torch.zeros(1, 2))


def test_probe_config_needs_positive_counts():
    with pytest.raises(ValueError, match="probes"):
        NGGNNConfig(node_features=1, edge_features=1, probes=-1)
