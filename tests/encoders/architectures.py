"""Architectures people train, built offline from code with small random configs.

Each entry builds an :class:`Arch`: the model (eval mode, dropout off, float64), the inputs
``torch.export`` runs it on (``None`` where ``torch.fx`` traces it, or where a Hugging Face model
builds its own), and ``call`` giving one output tensor. Hugging Face entries are skipped, with the
reason, when the installed ``transformers`` lacks the class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn


@dataclass
class Arch:
    model: nn.Module
    example_inputs: tuple | dict | None  # given to from_module / NeuralGraphOpt (None: not needed)
    inputs: tuple | dict  # what the model is called on in the tests

    def __call__(self, model: nn.Module | None = None) -> Tensor:
        model = self.model if model is None else model
        out = model(*self.inputs) if isinstance(self.inputs, tuple) else model(**self.inputs)
        if isinstance(out, Tensor):
            return out
        return out[0] if isinstance(out, tuple) else out.logits


# ---------------------------------------------------------------------------------------- Hugging Face
def _hf(class_name: str, config_name: str, **config: Any) -> Callable[[], Arch]:
    def build() -> Arch:
        transformers = pytest.importorskip("transformers")
        if not hasattr(transformers, class_name):
            pytest.skip(f"the installed transformers {transformers.__version__} has no {class_name}")
        model = getattr(transformers, class_name)(getattr(transformers, config_name)(**config))
        from encoders.exporting import example_inputs_for

        return Arch(model, None, example_inputs_for(model))

    return build


_TEXT = {"vocab_size": 40}
HUGGING_FACE = {
    "gpt2": _hf("GPT2LMHeadModel", "GPT2Config", n_embd=16, n_layer=2, n_head=2, n_positions=16, **_TEXT),
    "bert": _hf("BertForSequenceClassification", "BertConfig", hidden_size=16, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=24, max_position_embeddings=16, num_labels=3, **_TEXT),
    "llama": _hf("LlamaForCausalLM", "LlamaConfig", hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16, **_TEXT),
    "qwen2": _hf("Qwen2ForCausalLM", "Qwen2Config", hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                 num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=16, **_TEXT),
    "vit": _hf("ViTForImageClassification", "ViTConfig", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=24, image_size=8, patch_size=4, num_channels=3, num_labels=3),
    "t5": _hf("T5ForConditionalGeneration", "T5Config", d_model=16, d_kv=4, d_ff=24, num_layers=1,
              num_decoder_layers=1, num_heads=2, **_TEXT),
    "mobilenet_v2": _hf("MobileNetV2ForImageClassification", "MobileNetV2Config", depth_multiplier=0.25,
                        num_labels=3, image_size=32),
}


# ---------------------------------------------------------------------------------------- torch layers
def encoder_root() -> Arch:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    return Arch(model, None, (torch.randn(2, 5, 8),))


def encoder_layer_root() -> Arch:
    return Arch(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), None, (torch.randn(2, 5, 8),))


class LayerStack(nn.Module):
    """A ``ModuleList`` of encoder layers between an embedding and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
                                    for _ in range(2))
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def layer_stack() -> Arch:
    return Arch(LayerStack(), None, (torch.randint(0, 11, (2, 5)),))


# ---------------------------------------------------------------------------------------- written here
class BasicBlock(nn.Module):
    """ResNet-18's block: two 3x3 conv-BN pairs and a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18Style(nn.Module):
    """ResNet-18's layout (stem, 4 stages of 2 blocks, pooled linear head) at widths 4-8-8-16."""

    def __init__(self, widths: tuple[int, ...] = (4, 8, 8, 16), classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(),
                                  nn.MaxPool2d(2))
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def resnet18_style() -> Arch:
    return Arch(ResNet18Style(), None, (torch.randn(2, 3, 16, 16),))


class Attention(nn.Module):
    """Hand-written multi-head self-attention with a packed QKV projection (timm's layout)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTStyle(nn.Module):
    """A ViT: patch embedding, class token, learned positions, pre-norm blocks, class-token head."""

    def __init__(self, dim: int = 12, heads: int = 3, depth: int = 2, patch: int = 4, image: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def markov_transformer() -> Arch:
    """The transformer of the optimizer benchmark's sequence task (learned positions, causal mask)."""
    from l2o.meta.tasks.sequence import TinyTransformer

    example = (torch.randint(0, 11, (2, 6)),)
    return Arch(TinyTransformer(11, 8, 2, 2, 2, 6, "gelu"), example, example)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand (1x1), depthwise 3x3, project (1x1), residual."""

    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.block = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def mobilenet_style() -> Arch:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), InvertedResidual(4, 3), InvertedResidual(4, 2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    return Arch(model, None, (torch.randn(2, 3, 8, 8),))


def vit_style() -> Arch:
    example = (torch.randn(2, 3, 8, 8),)
    return Arch(ViTStyle(), example, example)


ARCHITECTURES: dict[str, Callable[[], Arch]] = {
    **{f"hf_{name}": build for name, build in HUGGING_FACE.items()},
    "transformer_encoder": encoder_root,
    "transformer_encoder_layer": encoder_layer_root,
    "transformer_layer_stack": layer_stack,
    "markov_transformer": markov_transformer,
    "resnet18_style": resnet18_style,
    "mobilenet_style": mobilenet_style,
    "vit_style": vit_style,
}


def build_arch(name: str, seed: int = 0) -> Arch:
    """Architecture ``name`` in float64 with random parameters (norm scales around 1), in eval mode."""
    torch.manual_seed(seed)
    arch = ARCHITECTURES[name]()
    model = arch.model.double().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            is_scale = p.dim() == 1 and pname.endswith("weight") and ("norm" in pname or "ln" in pname)
            p.normal_(1.0 if is_scale else 0.0, 0.3)

    def cast(x: Any) -> Any:
        return x.double() if isinstance(x, Tensor) and x.is_floating_point() else x

    convert = (lambda xs: tuple(cast(x) for x in xs)) if isinstance(arch.inputs, tuple) else (
        lambda xs: {k: cast(v) for k, v in xs.items()})
    example = None if arch.example_inputs is None else convert(arch.example_inputs)
    return Arch(model, example, convert(arch.inputs))
