"""Mixed-architecture batches: shapes, batch independence, writing head outputs back into parameters."""

from __future__ import annotations

import pytest
import torch

from encoders import unbatch_features
from tests.encoders.conftest import EDGE_FEATURES, HIDDEN, NODE_FEATURES, EncoderWithHeads, batch_of, make_encoder

MIXED = ["mlp", "cnn_mixed_kernels", "resnet", "transformer", "siren", "cnn_flatten", "scaled_mlp"]


def test_shapes(model, graphs):
    data = batch_of(*(graphs[n] for n in MIXED))
    with torch.no_grad():
        x, e = model.encoder(data)
        node_out, edge_out, graph_out = model(data)
    assert x.shape == (data.num_nodes, HIDDEN) and e.shape == (data.num_edges, HIDDEN)
    assert node_out.shape == (data.num_nodes, NODE_FEATURES) and edge_out.shape == (data.num_edges, EDGE_FEATURES)
    assert graph_out.shape == (len(MIXED), 3)
    assert torch.isfinite(x).all() and torch.isfinite(e).all() and torch.isfinite(graph_out).all()


@pytest.mark.parametrize("name", ["resnet", "siren", "transformer"])
def test_a_graph_does_not_depend_on_its_batch_mates(model, graphs, name):
    alone = batch_of(graphs[name])
    others = [n for n in MIXED if n != name]
    mixed = batch_of(*(graphs[n] for n in others[:3]), graphs[name], *(graphs[n] for n in others[3:]))
    with torch.no_grad():
        ref = model(alone)
        out = model(mixed)
    nodes = mixed.batch == 3
    edges = nodes[mixed.edge_index[0]]
    torch.testing.assert_close(out[0][nodes], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1][edges], ref[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2][3:4], ref[2], atol=1e-5, rtol=0)


def test_head_outputs_write_back_into_parameter_shapes(model, graphs):
    data = batch_of(*(graphs[n] for n in MIXED))
    with torch.no_grad():
        node_out, edge_out, _ = model(data)
    pieces = unbatch_features(data, data.x + node_out, data.edge_attr + edge_out)
    assert len(pieces) == len(MIXED)
    for name, (x, edge_attr) in zip(MIXED, pieces):
        graph = graphs[name]
        state = graph.to_state_dict(x=x, edge_attr=edge_attr)
        assert [tuple(t.shape) for t in state.values()] == graph.param_shapes
        assert not torch.equal(graph.to_flat(x, edge_attr), graph.to_flat())


def test_backward_reaches_every_parameter(graphs, variant):
    model = EncoderWithHeads(make_encoder(variant, list(graphs.values()), dropout=0.0)).train()
    data = batch_of(*(graphs[n] for n in MIXED))
    node_out, edge_out, graph_out = model(data)
    (node_out.square().mean() + edge_out.square().mean() + graph_out.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


@pytest.mark.parametrize(
    ("variant", "options"),
    [
        ("ng-gnn", {"aggregators": ("sum", "var"), "scalers": ("identity", "attenuation"), "norm": "none"}),
        ("ng-t-sparse", {"edge_updates": False, "heads": 1, "ff_ratio": 1}),
        ("ng-t-dense", {"edge_updates": False, "norm": "layer", "heads": 8}),
    ],
)
def test_other_options_run(graphs, variant, options):
    data = batch_of(*(graphs[n] for n in MIXED))
    x, e = make_encoder(variant, list(graphs.values()), **options)(data)
    assert x.shape == (data.num_nodes, HIDDEN) and torch.isfinite(x).all() and torch.isfinite(e).all()
