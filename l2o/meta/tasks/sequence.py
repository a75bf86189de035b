"""Small transformers on a synthetic sequence task: next-token prediction in a random Markov chain
(of order 1 by default; higher orders make the model attend to earlier tokens)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2o.meta.seeding import derive_seed, generator
from l2o.meta.tasks.base import Batch, Task, TaskFamily, seeded

__all__ = ["MarkovChainTask", "TinyTransformer", "TransformerFamily"]


class TinyTransformer(nn.Module):
    """Causal pre-norm transformer: token + learned position embeddings, ``depth`` encoder layers
    (independently initialised ``nn.TransformerEncoderLayer``, no dropout), LayerNorm, linear head.

    ``forward(tokens [B, L]) -> logits [B, L, vocab]``.
    """

    def __init__(
        self, vocab: int, d_model: int, heads: int, depth: int, ff_mult: int, seq_len: int, activation: str
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(seq_len, d_model))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model, heads, ff_mult * d_model, dropout=0.0, activation=activation, batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq_len), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        h = self.embed(tokens) + self.pos[:length]
        mask = self.mask[:length, :length]
        for layer in self.layers:
            h = layer(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h))


class MarkovChainTask(Task):
    """Predict the next token of sequences from a fixed random Markov chain of order ``k``.

    The first ``k`` tokens of a sequence are uniform; each later token is drawn from the row of
    ``transitions`` indexed by the ``k`` tokens before it (``sum_i token[t - k + i] * vocab^(k-1-i)``).
    Batches are ``(inputs [B, L], targets [B, L])`` with ``targets`` the inputs shifted by one.

    Args:
        transitions: ``[vocab^k, vocab]`` row-stochastic transition matrix (``k`` is read from its shape).
    """

    def __init__(
        self, model: nn.Module, transitions: Tensor, seq_len: int, batch_size: int, seed: int, name: str
    ) -> None:
        super().__init__(model, seed)
        vocab = transitions.shape[-1]
        order = round(math.log(transitions.shape[0], vocab)) if transitions.dim() == 2 and vocab > 1 else 0
        if vocab**order != transitions.shape[0] or not 1 <= order <= seq_len:
            raise ValueError(f"transitions must be [vocab^k, vocab] with 1 <= k <= seq_len={seq_len}, "
                             f"got {tuple(transitions.shape)}")
        self.transitions, self.order, self.seq_len, self.batch_size, self.name = (
            transitions, order, seq_len, batch_size, name)
        self.loss_id = name  # the name spells out the architecture; the chain's tokens arrive in the batch

    def batch(self, step: int, split: str = "train") -> Batch:
        gen = self.generator(split, step)
        vocab = self.transitions.shape[1]
        tokens = list(torch.randint(vocab, (self.order, self.batch_size), generator=gen))
        context = torch.zeros(self.batch_size, dtype=torch.long)  # row index of the last `order` tokens
        for token in tokens:
            context = context * vocab + token
        for _ in range(self.seq_len + 1 - self.order):
            tokens.append(torch.multinomial(self.transitions[context], 1, generator=gen).squeeze(1))
            context = context * vocab % self.transitions.shape[0] + tokens[-1]
        sequence = torch.stack(tokens, dim=1)
        return sequence[:, :-1], sequence[:, 1:]

    def example_inputs(self) -> tuple:
        """The first training batch's tokens: the transformer's causal mask slicing does not trace
        with ``torch.fx``."""
        return (self.batch(0)[0],)

    def loss(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        inputs, targets = batch
        logits = self.apply(params, inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class TransformerFamily(TaskFamily):
    """Random :class:`TinyTransformer` s on random Markov chains.

    Args:
        vocab_sizes, d_models, heads, depths, ff_mults, activations: choices drawn per task (heads
            that do not divide the width are skipped).
        seq_len: sequence length.
        batch_size: sequences per batch.
        temperature: scale of the transition logits; larger is more predictable.
        orders: Markov orders drawn per task (how many previous tokens the next one depends on).
    """

    name = "transformer"

    def __init__(
        self,
        vocab_sizes: Sequence[int] = (8, 16),
        d_models: Sequence[int] = (16, 32),
        heads: Sequence[int] = (1, 2, 4),
        depths: Sequence[int] = (1, 2),
        ff_mults: Sequence[int] = (2, 4),
        activations: Sequence[str] = ("relu", "gelu"),
        seq_len: int = 16,
        batch_size: int = 16,
        temperature: float = 3.0,
        orders: Sequence[int] = (1,),
    ) -> None:
        self.vocab_sizes, self.d_models, self.heads = tuple(vocab_sizes), tuple(d_models), tuple(heads)
        self.depths, self.ff_mults, self.activations = tuple(depths), tuple(ff_mults), tuple(activations)
        self.seq_len, self.batch_size, self.temperature = seq_len, batch_size, temperature
        self.orders = tuple(orders)

    def sample(self, seed: int, instance: int | None = None) -> MarkovChainTask:
        instance = seed if instance is None else instance
        rng = random.Random(derive_seed(seed, self.name))
        vocab, d_model = rng.choice(self.vocab_sizes), rng.choice(self.d_models)
        heads = rng.choice([h for h in self.heads if d_model % h == 0] or [1])
        depth, ff_mult, activation = rng.choice(self.depths), rng.choice(self.ff_mults), rng.choice(self.activations)
        order = rng.choice(self.orders)
        logits = self.temperature * torch.randn(vocab**order, vocab, generator=generator(seed, "chain"))
        with seeded(instance):  # one chain per task; each instance its own weights and token stream
            model = TinyTransformer(vocab, d_model, heads, depth, ff_mult, self.seq_len, activation)
        name = f"transformer-v{vocab}-d{d_model}h{heads}x{depth}-{activation}" + (f"-order{order}" if order > 1 else "")
        return MarkovChainTask(model, logits.softmax(-1), self.seq_len, self.batch_size, instance, name)
