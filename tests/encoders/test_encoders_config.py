"""Bad configurations and graphs the encoders cannot read raise clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from encoders import (
    NGGNN,
    GraphReadout,
    NeuralGraph,
    NGGNNConfig,
    NGTransformer,
    NGTransformerConfig,
    degree_histograms,
)
from tests.encoders.conftest import batch_of, make_encoder

SIZES = {"node_features": 3, "edge_features": 75}


@pytest.mark.parametrize(
    ("config", "options", "message"),
    [
        (NGTransformerConfig, {"hidden": 30, "heads": 4}, "not divisible by heads=4"),
        (NGGNNConfig, {"aggregators": ("mean", "median")}, "unknown aggregator 'median'"),
        (NGGNNConfig, {"scalers": ("identity", "cubic")}, "unknown scaler 'cubic'"),
        (NGGNNConfig, {"aggregators": ()}, "at least one aggregator"),
        (NGGNNConfig, {"film": "quadratic"}, "unknown film"),
        (NGGNNConfig, {"norm": "batch"}, "unknown norm 'batch'"),
        (NGTransformerConfig, {"attention": "global"}, "unknown attention mode"),
        (NGTransformerConfig, {"dropout": 1.0}, "dropout"),
        (NGGNNConfig, {"hidden": 0}, "hidden must be a positive integer"),
        (NGTransformerConfig, {"ff_ratio": 0}, "ff_ratio"),
        (NGGNNConfig, {"rff_scale": -1.0}, "rff_scale"),
    ],
)
def test_bad_configs_raise(config, options, message):
    with pytest.raises(ValueError, match=message):
        config(**SIZES, **options)


def test_degree_scalers_need_edges():
    lonely = NeuralGraph.from_parameters([torch.randn(3)])
    with pytest.raises(ValueError, match="mean log-degree is 0"):
        NGGNN(NGGNNConfig(node_features=1, edge_features=1), degree_histograms([lonely]))
    NGGNN(NGGNNConfig(node_features=1, edge_features=1, scalers=("identity",)), degree_histograms([lonely]))
    with pytest.raises(ValueError, match="at least one graph"):
        degree_histograms([])


def test_graphs_beyond_the_embedding_tables_raise(graphs):
    wide = NeuralGraph.from_module(nn.Sequential(nn.Linear(20, 4), nn.ReLU(), nn.Linear(4, 12)), **{
        "kernel_grid": (5, 5), "node_channels": 3, "edge_channels": 3})
    for option, size in (("max_inputs", 19), ("max_outputs", 11), ("max_depth", 1)):
        model = make_encoder("ng-t-sparse", [wide], **{option: size})
        with pytest.raises(ValueError, match=option):
            model(batch_of(wide))
    with pytest.raises(ValueError, match="max_heads"):
        make_encoder("ng-t-sparse", [wide], max_heads=1)(batch_of(graphs["transformer"]))
    with pytest.raises(ValueError, match="max_outputs=8"):
        GraphReadout(8, 1, max_outputs=8)(torch.zeros(wide.num_nodes, 8), batch_of(wide))


def test_feature_width_mismatch_is_explained():
    graph = NeuralGraph.from_module(nn.Sequential(nn.Linear(2, 3)))
    model = NGTransformer(NGTransformerConfig(**SIZES))
    with pytest.raises(ValueError, match="node_features / edge_features"):
        model(batch_of(graph))
