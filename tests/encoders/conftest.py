"""Fixtures for the encoder tests: graphs with one shared layout and encoders with both heads."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from encoders import (
    NGGNN,
    GraphReadout,
    NeuralGraph,
    NGGNNConfig,
    NGTransformer,
    NGTransformerConfig,
    NodeEdgeHead,
    degree_histograms,
)
from tests.encoders.networks import NETWORKS, build

LAYOUT = {"kernel_grid": (5, 5), "node_channels": 3, "edge_channels": 3}
NODE_FEATURES, EDGE_FEATURES = 3, 3 * 25
HIDDEN = 16

# encoder variants: class and config options (dropout is on, tests run in eval mode)
VARIANTS = {
    "ng-gnn": (NGGNN, NGGNNConfig, {"dropout": 0.1}),
    "ng-gnn-cheap": (NGGNN, NGGNNConfig, {"film": "elementwise", "edge_updates": False, "norm": "graph"}),
    "ng-t-sparse": (NGTransformer, NGTransformerConfig, {"dropout": 0.1}),
    "ng-t-dense": (NGTransformer, NGTransformerConfig, {"attention": "dense", "norm": "graph"}),
}


class EncoderWithHeads(nn.Module):
    """An encoder with an equivariant node/edge head and an invariant graph readout."""

    def __init__(self, encoder: nn.Module, max_outputs: int = 8) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = NodeEdgeHead(HIDDEN, NODE_FEATURES, EDGE_FEATURES)
        self.readout = GraphReadout(HIDDEN, out_features=3, max_outputs=max_outputs)

    def forward(self, data, **probe) -> tuple[Tensor, Tensor, Tensor]:
        x, e = self.encoder(data, **probe)
        node_out, edge_out = self.head(x, e, data.edge_index)
        return node_out, edge_out, self.readout(x, data)


def make_encoder(variant: str, graphs: list[NeuralGraph], **options) -> nn.Module:
    """Encoder ``variant`` (hidden 16, 3 layers unless ``options`` say otherwise), seeded, for graphs
    of the shared layout."""
    cls, config_cls, defaults = VARIANTS[variant]
    config = config_cls(node_features=NODE_FEATURES, edge_features=EDGE_FEATURES, hidden=HIDDEN,
                        **{"layers": 3, **defaults, **options})
    torch.manual_seed(0)
    return cls(config, degree_histograms(graphs)) if cls is NGGNN else cls(config)


def batch_of(*graphs: NeuralGraph) -> Batch:
    return Batch.from_data_list([g.to_pyg() for g in graphs])


@pytest.fixture(scope="session")
def graphs() -> dict[str, NeuralGraph]:
    """One neural graph per test network, all with the shared layout."""
    return {name: NeuralGraph.from_module(build(name)[0], **LAYOUT) for name in NETWORKS}


@pytest.fixture(params=list(VARIANTS))
def variant(request) -> str:
    return request.param


@pytest.fixture
def model(variant: str, graphs: dict[str, NeuralGraph]) -> EncoderWithHeads:
    """Encoder ``variant`` with both heads, in eval mode."""
    return EncoderWithHeads(make_encoder(variant, list(graphs.values()))).eval()
