"""Small CNNs of diverse architectures ("CNN Wild Park"), described by JSON-serialisable specs.

A spec::

    {"in_channels": 1, "num_classes": 10, "dropout": 0.1,
     "layers": [{"out_channels": 8, "kernel_size": 5, "stride": 2, "activation": "relu", "residual": false},
                {"out_channels": 8, "kernel_size": 3, "stride": 1, "activation": "gelu", "residual": true}]}

:func:`build_cnn` turns it into a plain ``nn.Sequential``: per layer a same-padded ``Conv2d`` (or a
:class:`Residual` block ``x + conv(x)``, which needs equal channels and stride 1) and its activation
module, then ``AdaptiveAvgPool2d(1)``, ``Flatten``, ``Dropout`` and a ``Linear`` head. Every piece is
a standard module or a small traceable block, so ``torch.fx`` follows it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "Residual", "architecture_id", "build_cnn", "cnn_param_shapes", "sample_cnn_spec"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
}
_LAYER_KEYS = {"out_channels", "kernel_size", "stride", "activation", "residual"}


class Residual(nn.Module):
    """``x + conv(x)`` for a convolution that keeps the channel count and the spatial size."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x)


def _check_spec(spec: Mapping[str, Any]) -> None:
    for key in ("in_channels", "num_classes", "layers"):
        if key not in spec:
            raise ValueError(f"CNN spec lacks {key!r}: {dict(spec)}")
    if not spec["layers"]:
        raise ValueError("CNN spec needs at least one conv layer")
    if not 0.0 <= float(spec.get("dropout", 0.0)) < 1.0:
        raise ValueError(f"CNN spec dropout must be in [0, 1), got {spec.get('dropout')}")
    channels = spec["in_channels"]
    for i, layer in enumerate(spec["layers"]):
        if set(layer) != _LAYER_KEYS:
            raise ValueError(f"CNN spec layer {i} must have the keys {sorted(_LAYER_KEYS)}, got {sorted(layer)}")
        if layer["activation"] not in ACTIVATIONS:
            raise ValueError(f"CNN spec layer {i}: unknown activation {layer['activation']!r}; "
                             f"choose from {sorted(ACTIVATIONS)}")
        if layer["kernel_size"] % 2 != 1 or layer["stride"] not in (1, 2) or layer["out_channels"] < 1:
            raise ValueError(f"CNN spec layer {i}: need an odd kernel, stride 1 or 2 and >= 1 channel: {layer}")
        if layer["residual"] and (layer["out_channels"] != channels or layer["stride"] != 1):
            raise ValueError(f"CNN spec layer {i}: a residual layer needs out_channels == in_channels "
                             f"({channels}) and stride 1: {layer}")
        channels = layer["out_channels"]


def build_cnn(spec: Mapping[str, Any]) -> nn.Sequential:
    """The CNN described by ``spec`` (see the module docstring), with PyTorch's default initialisation.

    Input ``[B, in_channels, H, W]`` -> logits ``[B, num_classes]``. Raises ``ValueError`` for a bad spec.
    """
    _check_spec(spec)
    modules: list[nn.Module] = []
    channels = spec["in_channels"]
    for layer in spec["layers"]:
        k = layer["kernel_size"]
        conv = nn.Conv2d(channels, layer["out_channels"], k, stride=layer["stride"], padding=k // 2)
        modules += [Residual(conv) if layer["residual"] else conv, ACTIVATIONS[layer["activation"]]()]
        channels = layer["out_channels"]
    modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(float(spec.get("dropout", 0.0))),
                nn.Linear(channels, spec["num_classes"])]
    return nn.Sequential(*modules)


def cnn_param_shapes(spec: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of ``build_cnn(spec)`` (built on the meta device: no memory, no RNG)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_cnn(spec).state_dict().items()}


def architecture_id(spec: Mapping[str, Any]) -> str:
    """A short stable hash of the architecture (the spec without training-only entries such as dropout)."""
    arch = {k: v for k, v in spec.items() if k != "dropout"}
    return hashlib.sha1(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:12]


def sample_cnn_spec(
    rng: random.Random, in_channels: int, num_classes: int, image_size: int, max_dropout: float = 0.5
) -> dict[str, Any]:
    """Draw a spec: 2-5 conv layers, 4-32 channels, kernels 3/5/7, an activation per layer, residual
    blocks (about 1 in 3 layers after the first), stride 2 on about half the layers while the maps are
    at least 8 pixels wide, dropout ``U(0, max_dropout)`` before the head.
    """
    layers, channels, size = [], in_channels, image_size
    for i in range(rng.randint(2, 5)):
        kernel, activation = rng.choice([3, 5, 7]), rng.choice(sorted(ACTIVATIONS))
        if i > 0 and rng.random() < 1 / 3:
            layers.append({"out_channels": channels, "kernel_size": kernel, "stride": 1,
                           "activation": activation, "residual": True})
            continue
        stride = 2 if size >= 8 and rng.random() < 0.5 else 1
        channels = rng.choice([4, 8, 16, 32])
        layers.append({"out_channels": channels, "kernel_size": kernel, "stride": stride,
                       "activation": activation, "residual": False})
        size = math.ceil(size / stride)
    return {"in_channels": in_channels, "num_classes": num_classes, "layers": layers,
            "dropout": round(rng.uniform(0.0, max_dropout), 3)}
