"""Train one CNN of a zoo, saving checkpoints at chosen epochs; training hyperparameters and their sampling."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoders.zoo.cnn import build_cnn

__all__ = ["TrainHparams", "evaluate", "sample_hparams", "train_cnn"]

_OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainHparams:
    """How a zoo CNN is trained: ``optimizer`` (``"adam"``, or ``"sgd"`` with momentum 0.9), learning
    rate, decoupled ``weight_decay`` (AdamW / SGD's L2), ``init_scale`` multiplying the default initial
    weights, mini-batch size, and ``train_fraction``: the share of the training images it sees (a
    fixed random subset per model, visited as many times per epoch as it takes to make a full
    epoch's steps; small shares overfit, which spreads the zoo's test accuracies the way real zoos'
    do)."""

    optimizer: str
    lr: float
    weight_decay: float
    init_scale: float
    batch_size: int
    train_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.3g}")


def sample_hparams(rng: random.Random) -> TrainHparams:
    """Adam lr log-U(5e-4, 1e-2) or SGD lr log-U(2e-2, 3e-1); weight decay log-U(1e-6, 1e-2); init
    scale log-U(0.5, 2); batch size 32, 64 or 128."""
    optimizer = rng.choice(_OPTIMIZERS)
    lr = _log_uniform(rng, 5e-4, 1e-2) if optimizer == "adam" else _log_uniform(rng, 2e-2, 3e-1)
    return TrainHparams(optimizer, lr, _log_uniform(rng, 1e-6, 1e-2), _log_uniform(rng, 0.5, 2.0),
                        rng.choice([32, 64, 128]))


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` in eval mode on ``images [N, C, H, W]``, ``labels [N]``."""
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start:start + batch_size])
        target = labels[start:start + batch_size]
        correct += int((logits.argmax(1) == target).sum())
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
    return correct / len(labels), loss / len(labels)


def _batches(n: int, n_full: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch's mini-batches of indices below ``n`` (the images a model trains on, ``n_full``
    in the whole training set): one shuffled pass when it sees them all; otherwise as many batches
    as a full pass has, from consecutive shuffled passes over its share, so the share changes how
    much a model can overfit and not how long it trains."""
    if n == n_full:
        return list(torch.randperm(n, generator=generator).split(batch_size))
    steps = -(-n_full // batch_size)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-steps * batch_size // n))])
    return list(order[:steps * batch_size].split(batch_size))


def _optimizer(model: nn.Module, hp: TrainHparams) -> torch.optim.Optimizer:
    if hp.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)


def train_cnn(
    spec: Mapping[str, Any], hparams: TrainHparams, data: tuple[Tensor, Tensor, Tensor, Tensor],
    checkpoints: Sequence[int], seed: int,
) -> list[dict[str, Any]]:
    """Train ``build_cnn(spec)`` for ``max(checkpoints)`` epochs and snapshot it after each epoch in ``checkpoints``.

    Args:
        spec, hparams: the network and how to train it.
        data: ``(train_images, train_labels, test_images, test_labels)``.
        checkpoints: epochs to record (0 = the initial weights).
        seed: seeds initialisation, shuffling and dropout (the global RNG is restored afterwards).

    Returns:
        One dict per recorded checkpoint: ``epoch``, ``state_dict``, ``train_acc``, ``test_acc``,
        ``train_loss``, ``test_loss``. Training stops at the first non-finite loss (a diverged run);
        its later checkpoints are left out. Gradients are clipped to norm 5.
    """
    x_train, y_train, x_test, y_test = data
    wanted = sorted(set(int(e) for e in checkpoints))
    if not wanted or wanted[0] < 0:
        raise ValueError(f"checkpoints must be non-negative epochs, got {list(checkpoints)}")
    out: list[dict[str, Any]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_cnn(spec)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("weight"):
                    p.mul_(hparams.init_scale)
        optimizer = _optimizer(model, hparams)
        shuffle = torch.Generator().manual_seed(seed)
        n_full = len(y_train)
        if hparams.train_fraction < 1.0:
            keep = max(hparams.batch_size, round(hparams.train_fraction * len(y_train)))
            subset = torch.randperm(len(y_train), generator=shuffle)[:keep]
            x_train, y_train = x_train[subset], y_train[subset]
        for epoch in range(wanted[-1] + 1):
            if epoch > 0:
                model.train()
                for batch in _batches(len(y_train), n_full, hparams.batch_size, shuffle):
                    loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
                    if not torch.isfinite(loss):
                        return out
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                    optimizer.step()
            if epoch in wanted:
                train_acc, train_loss = evaluate(model, x_train, y_train)
                test_acc, test_loss = evaluate(model, x_test, y_test)
                out.append({"epoch": epoch, "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
                            "train_acc": train_acc, "test_acc": test_acc, "train_loss": train_loss,
                            "test_loss": test_loss})
    return out
