import matplotlib

matplotlib.use("Agg")

from encoders import NeuralGraph  # noqa: E402
from encoders.plotting import draw_neural_graph, node_positions  # noqa: E402
from tests.encoders.networks import build  # noqa: E402


def test_draw_neural_graph_draws_every_node_and_edge(tmp_path):
    g = NeuralGraph.from_module(build("resnet")[0])
    ax = draw_neural_graph(g, title="resnet")
    assert len(ax.patches) == g.num_edges
    assert sum(len(c.get_offsets()) for c in ax.collections) == g.num_nodes
    ax.figure.savefig(tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 1000
    pos = node_positions(g)
    assert pos.shape == (g.num_nodes, 2) and len({tuple(p) for p in pos.tolist()}) == g.num_nodes
