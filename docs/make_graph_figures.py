"""Render the neural-graph pictures used in docs/neural_graphs.md.

Run: ``.venv/bin/python docs/make_graph_figures.py`` (writes docs/images/graph_*.png).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from encoders import NeuralGraph  # noqa: E402
from encoders.plotting import draw_neural_graph  # noqa: E402

OUT = Path(__file__).parent / "images"


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv(x))


def main() -> None:
    torch.manual_seed(0)
    OUT.mkdir(exist_ok=True)
    models = {
        "mlp": ("MLP 3-5-4-2", nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))),
        "cnn": (
            "CNN: conv 3x3 (1->3), residual block with BatchNorm, GAP, linear 3->2",
            nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), Residual(3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(3, 2)),
        ),
    }
    for name, (title, model) in models.items():
        graph = NeuralGraph.from_module(model)
        fig, ax = plt.subplots(figsize=(7, 3.6))
        draw_neural_graph(graph, ax, title=f"{title}\n{graph.num_nodes} nodes, {graph.num_edges} edges, "
                                           f"edge features {graph.edge_attr.shape[1]}")
        fig.tight_layout()
        fig.savefig(OUT / f"graph_{name}.png", dpi=120)
        plt.close(fig)
        print(f"wrote {OUT / f'graph_{name}.png'}: {graph}")


if __name__ == "__main__":
    main()
