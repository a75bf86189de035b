"""Mixed precision with NeuralGraphOpt: bf16 autocast, or fp16 autocast with a ``GradScaler``.

The scaler unscales the gradients in place before ``NeuralGraphOpt.step`` and skips the step
(leaving parameters and optimizer state untouched) when a gradient is inf/NaN::

    python examples/amp_loop.py --precision bf16
    python examples/amp_loop.py --precision fp16
"""

from __future__ import annotations

import argparse
from itertools import cycle

import torch
from torch import nn
from toy import full_loss, loss_fn, make_loader, make_model

from l2o import NeuralGraphOpt

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def main(precision: str = "bf16", steps: int = 30) -> nn.Module:
    """Train the toy model with autocast to ``precision``; the parameters stay float32."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = make_model().to(device)
    optimizer = NeuralGraphOpt(model.parameters(), model=model)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")  # a no-op when disabled
    for _, (x, y) in zip(range(steps), cycle(make_loader())):
        optimizer.zero_grad()
        with torch.autocast(device, dtype=DTYPES[precision]):
            loss = loss_fn(model, (x.to(device), y.to(device)))
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # the gradients are now the true ones: clip them here
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        scaler.step(optimizer)  # skipped if a gradient is inf/NaN
        scaler.update()
    print(f"{precision}: loss {full_loss(model.cpu()):.4f}")
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--steps", type=int, default=30)
    main(**vars(parser.parse_args()))
