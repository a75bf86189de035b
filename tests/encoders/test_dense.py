"""The dense same-architecture path agrees with the sparse PyG path it speeds up.

Outputs of every encoder variant, both heads and the probe features, and the gradients of all
parameters, on batches of several networks of one architecture. Differences come from summation
order only (float32; the largest seen is ~1e-6 relative).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import stack_module_state
from torch_geometric.data import Batch

from encoders import NeuralGraph
from encoders.dense import DenseGraphs, dense_layout
from tests.encoders.conftest import LAYOUT, VARIANTS, EncoderWithHeads, make_encoder
from tests.encoders.networks import build

DENSE_NETWORKS = ["mlp", "siren", "cnn_mixed_kernels", "cnn_flatten"]
BATCH = 3


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    a, b = a.detach(), b.detach()
    return bool((a - b).abs().max() <= tol * max(1.0, float(b.abs().max())))


def same_architecture(name: str) -> tuple[list[NeuralGraph], Batch, DenseGraphs]:
    """``BATCH`` networks ``name`` with different weights: their graphs, PyG batch and dense batch."""
    graphs = [NeuralGraph.from_module(build(name, seed)[0], **LAYOUT) for seed in range(BATCH)]
    flat = torch.stack([g.to_flat() for g in graphs])
    return graphs, Batch.from_data_list([g.to_pyg() for g in graphs]), DenseGraphs.from_flat(graphs[0], flat)


class DenseHeads(EncoderWithHeads):
    """The same model, reading a dense batch; outputs flattened to the sparse path's row order."""

    def forward(self, data, **probe):
        x, e = self.encoder(data, **probe)
        node_out, edge_out = self.head.forward_dense(x, e, data.layout)
        return node_out.flatten(0, 1), edge_out.flatten(0, 1), self.readout.forward_dense(x, data.layout)


@pytest.mark.parametrize("name", DENSE_NETWORKS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dense_path_matches_sparse_path(name: str, variant: str) -> None:
    graphs, sparse, dense = same_architecture(name)
    model = EncoderWithHeads(make_encoder(variant, graphs)).eval()
    twin = DenseHeads(model.encoder).eval()
    twin.head, twin.readout = model.head, model.readout  # the same parameters
    reference, fast = model(sparse), twin(dense)
    for a, b in zip(fast, reference):
        assert close(a, b), (a - b).abs().max()
    grads = []
    for outputs in (reference, fast):
        model.zero_grad()
        sum(o.square().mean() for o in outputs).backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        assert close(grads[1][key], grads[0][key], 1e-4), key


def test_probe_features_match_on_both_paths() -> None:
    nets = [build("siren", seed)[0] for seed in range(BATCH)]
    graphs, sparse, dense = same_architecture("siren")
    params = stack_module_state(nets)[0]
    encoder = make_encoder("ng-gnn", graphs, probes=4, probe_dim=nets[0][0].in_features).eval()
    x_sparse, e_sparse = encoder(sparse, probe_net=nets[0], probe_params=params)
    x_dense, e_dense = encoder(dense, probe_net=nets[0], probe_params=params)
    assert close(x_dense.flatten(0, 1), x_sparse) and close(e_dense.flatten(0, 1), e_sparse)


def test_compiled_dense_path_matches_eager() -> None:
    graphs, _, dense = same_architecture("mlp")
    encoder = make_encoder("ng-gnn", graphs, layers=1).eval()
    eager = encoder(dense)
    encoder.compile_dense()
    compiled = encoder(dense)
    assert all(close(a, b) for a, b in zip(compiled, eager))


@pytest.mark.parametrize("name", ["resnet", "transformer"])
def test_graphs_without_a_dense_layout_are_refused_clearly(name: str) -> None:
    graph = NeuralGraph.from_module(build(name)[0], **LAYOUT)
    with pytest.raises(ValueError, match="no dense layout .* outside dense layer connections .* sparse"):
        dense_layout(graph)


def test_dense_batches_check_the_parameter_width() -> None:
    graph = NeuralGraph.from_module(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    with pytest.raises(ValueError, match=r"expected flat parameters \[B, >= 13\]"):
        DenseGraphs.from_flat(graph, torch.zeros(2, 5))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bfloat16_autocast_stays_near_float32(variant: str) -> None:
    """``FitConfig(bf16=True)`` runs the encoders under CPU autocast: both paths must run and stay
    within bfloat16 rounding of the float32 outputs (8-bit mantissa, ~0.4 % per rounding; 0.3-2 %
    relative RMS measured after the layers of these encoders; a wrong dtype path would give ~100 %)."""
    graphs, sparse, dense = same_architecture("siren")
    model = EncoderWithHeads(make_encoder(variant, graphs)).eval()
    twin = DenseHeads(model.encoder).eval()
    twin.head, twin.readout = model.head, model.readout
    for net, data in ((model, sparse), (twin, dense)):
        reference = net(data)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(data)
        for a, b in zip(low, reference):
            relative = float((a.float() - b).detach().norm() / b.detach().norm())
            assert relative < 0.05, (variant, relative)
        model.zero_grad()
        sum(o.float().square().mean() for o in low).backward()
        assert all(p.grad is None or bool(p.grad.isfinite().all()) for p in model.parameters())
