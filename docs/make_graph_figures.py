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


def optional_import(name: str):
    """``import name``, or ``None`` where it is not installed."""
    try:
        return __import__(name)
    except ImportError:
        return None


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
    transformers = optional_import("transformers")
    if transformers is not None:
        config = transformers.LlamaConfig(hidden_size=4, intermediate_size=3, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=2, vocab_size=3,
                                          tie_word_embeddings=True)
        models["llama"] = ("Llama block: 2 query heads sharing 1 key/value head (GQA), SiLU-gated MLP, tied head",
                           transformers.LlamaForCausalLM(config))
    models["attention"] = ("nn.TransformerEncoderLayer: d=4, 2 heads, feed-forward 3",
                           nn.TransformerEncoderLayer(4, 2, 3, dropout=0.0, batch_first=True))
    for name, (title, model) in models.items():
        graph = NeuralGraph.from_module(model)
        fig, ax = plt.subplots(figsize=(9, 4.2) if name in ("llama", "attention") else (7, 3.6))
        draw_neural_graph(graph, ax, title=f"{title}\n{graph.num_nodes} nodes, {graph.num_edges} edges, "
                                           f"edge features {graph.edge_attr.shape[1]}")
        fig.tight_layout()
        fig.savefig(OUT / f"graph_{name}.png", dpi=120)
        plt.close(fig)
        print(f"wrote {OUT / f'graph_{name}.png'}: {graph}")


if __name__ == "__main__":
    main()
