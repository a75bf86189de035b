"""Small networks of every supported kind, shared by the graph, encoder and optimizer tests.

Each entry builds ``(model, example_input)``; ``model`` is in eval mode with dropout 0 so it is
a deterministic function of its parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from encoders.zoo.siren import Sine


class ResidualConv(nn.Module):
    """``x + bn(conv(x))``: residual edges and a normalization layer."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.conv(x))


class ScaledMLP(nn.Module):
    """An MLP with a standalone learned scale: a parameter no layer template claims."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 6), nn.GELU(), nn.Linear(6, 2))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def mlp() -> tuple[nn.Module, torch.Tensor]:
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)), torch.randn(7, 3)


def siren() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Linear(2, 8), Sine(), nn.Linear(8, 8), Sine(), nn.Linear(8, 1))
    return model, torch.rand(10, 2) * 2 - 1


def cnn_mixed_kernels() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 5, padding=2), nn.SiLU(), nn.Conv2d(5, 3, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4),
    )
    return model, torch.randn(2, 1, 10, 10)


def cnn_flatten() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 5))
    return model, torch.randn(2, 1, 6, 6)


def resnet() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), ResidualConv(4, 3), nn.ReLU(), ResidualConv(4, 5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )
    return model, torch.randn(2, 2, 8, 8)


def transformer() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(
        nn.Embedding(11, 8),
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
        nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True),
                              1, norm=nn.LayerNorm(8), enable_nested_tensor=False),
        nn.Linear(8, 3),
    )
    return model, torch.randint(0, 11, (2, 5))


def scaled_mlp() -> tuple[nn.Module, torch.Tensor]:
    return ScaledMLP(), torch.randn(4, 3)


NETWORKS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "mlp": mlp,
    "siren": siren,
    "cnn_mixed_kernels": cnn_mixed_kernels,
    "cnn_flatten": cnn_flatten,
    "resnet": resnet,
    "transformer": transformer,
    "scaled_mlp": scaled_mlp,
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Network ``name`` with random (non-default) parameters, in eval mode."""
    torch.manual_seed(seed)
    model, example = NETWORKS[name]()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval(), example
