"""The demo: train one network with ``NeuralGraphOpt``, with Adam(1e-3) and with lr-tuned Adam on
bundled data, side by side.

``l2o demo`` (and ``make demo``) runs it: same initial weights, same mini-batches, CPU friendly.
It prints the training curves and test accuracy of both and saves a plot and a JSON record.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from encoders.data import load_offline, train_test_split

__all__ = ["ADAM_GRID", "Curve", "run_demo", "train_classifier"]

ADAM_GRID = (3e-4, 1e-3, 3e-3, 1e-2)
"""Learning rates the demo tunes Adam over (Adam(1e-3) is the untuned default of the comparison)."""


@dataclass
class Curve:
    """A training run: loss every ``log_every`` steps, final test metrics, wall time (``seconds``,
    of which ``first_step_seconds`` for the first step: NeuralGraphOpt compiles its fused step
    there, a one-off cost that a short demo would otherwise read as a slow optimizer)."""

    name: str
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: float = float("nan")
    test_accuracy: float = float("nan")
    seconds: float = 0.0
    first_step_seconds: float = 0.0


def demo_model(in_features: int, classes: int = 10) -> nn.Module:
    """The demo network: an MLP ``in -> 128 -> 64 -> classes`` with ReLU."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_features, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, classes)
    )


def train_classifier(
    name: str,
    model: nn.Module,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    batch_size: int,
    seed: int,
    log_every: int = 10,
) -> Curve:
    """Train ``model`` with cross-entropy for ``steps`` mini-batch steps (batches drawn by ``seed``).

    ``train``/``test`` are ``(images [n, ...], labels [n])``. Returns the curve of the training loss
    (mean over each ``log_every`` window) and the final test loss and accuracy.
    """
    optimizer = make_optimizer(model)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    curve, window = Curve(name), []
    start = time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc=name, leave=False):
        idx = torch.randint(len(train[1]), (batch_size,), generator=generator)
        loss = loss_fn(model(train[0][idx]), train[1][idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        window.append(loss.item())
        if step == 1:
            curve.first_step_seconds = time.perf_counter() - start
        if step % log_every == 0 or step == steps:
            curve.steps.append(step)
            curve.train_loss.append(sum(window) / len(window))
            window = []
    curve.seconds = time.perf_counter() - start
    with torch.no_grad():
        logits = model(test[0])
        curve.test_loss = loss_fn(logits, test[1]).item()
        curve.test_accuracy = (logits.argmax(1) == test[1]).float().mean().item()
    return curve


def run_demo(
    dataset: str = "mnist5k", steps: int = 500, batch_size: int = 128, seed: int = 0, out: Path = Path("results/demo")
) -> list[Curve]:
    """Train the demo MLP with the pretrained NeuralGraphOpt (untuned), with Adam(1e-3) and with Adam
    at the best learning rate of :data:`ADAM_GRID` (chosen by final training loss, never by the test
    split); print, plot, save."""
    from l2o.optim import NeuralGraphOpt

    images, labels = load_offline(dataset)
    train, test = train_test_split(images, labels, test_fraction=0.2, seed=seed)

    def run(name: str, make: Callable[[nn.Module], torch.optim.Optimizer]) -> Curve:
        torch.manual_seed(seed)
        return train_classifier(name, demo_model(images[0].numel()), make, train, test, steps, batch_size, seed)

    curves = [run("NeuralGraphOpt", lambda m: NeuralGraphOpt(m.parameters(), model=m))]
    grid = {lr: run(f"Adam(lr={lr:g})", lambda m, lr=lr: torch.optim.Adam(m.parameters(), lr=lr)) for lr in ADAM_GRID}
    best = min(grid, key=lambda lr: grid[lr].train_loss[-1])
    curves.append(grid[1e-3])
    if best != 1e-3:
        curves.append(grid[best])
    curves[-1].name = f"Adam tuned (lr={best:g})" if best != 1e-3 else "Adam(lr=1e-3), also tuned"
    _report(curves, dataset, steps, batch_size, seed, out)
    return curves


def _report(curves: list[Curve], dataset: str, steps: int, batch_size: int, seed: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    print(f"\nDemo: MLP on {dataset}, {steps} steps of batch {batch_size}, seed {seed}")
    print(f"{'optimizer':<26}{'final train loss':>18}{'test loss':>12}{'test acc':>10}{'seconds':>10}"
          f"{'of which step 1':>17}")
    for c in curves:
        print(f"{c.name:<26}{c.train_loss[-1]:>18.4f}{c.test_loss:>12.4f}{c.test_accuracy:>10.3f}{c.seconds:>10.1f}"
              f"{c.first_step_seconds:>17.1f}")
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in curves:
        ax.plot(c.steps, c.train_loss, label=f"{c.name} (test acc {c.test_accuracy:.3f})")
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title=f"MLP on {dataset}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=120)
    record = {
        "command": " ".join(["l2o"] + sys.argv[1:]) if sys.argv[0].endswith("l2o") else " ".join(sys.argv),
        "machine": platform.platform(), "torch": torch.__version__, "dataset": dataset, "steps": steps,
        "batch_size": batch_size, "seed": seed, "curves": [asdict(c) for c in curves],
    }
    (out / "demo.json").write_text(json.dumps(record, indent=2))
    print(f"plot: {out / 'demo.png'}   record: {out / 'demo.json'}")
