"""torch.compile with NeuralGraphOpt. A compiled model shares the original parameters, so build the
optimizer from either; ``model=compiled`` is unwrapped to the original module (so checkpoints name
parameters the same with or without compile)::

    python examples/compile_loop.py
    python examples/compile_loop.py --compile-step   # compile optimizer.step yourself: works, slow to compile

The optimizer compiles its own fused step (``compile="auto"``); ``--compile-step`` turns that off
(``compile=False``) and wraps the reference step in ``torch.compile`` instead.
"""

from __future__ import annotations

import argparse
from itertools import cycle

import torch
from torch import nn
from toy import full_loss, loss_fn, make_loader, make_model

from l2o import NeuralGraphOpt


def main(steps: int = 20, compile_step: bool = False) -> tuple[nn.Module, NeuralGraphOpt]:
    """Train the toy model through its compiled version; returns the original model and the optimizer."""
    model = make_model()
    compiled = torch.compile(model)
    optimizer = NeuralGraphOpt(compiled.parameters(), model=compiled, compile=False if compile_step else "auto")
    step = torch.compile(optimizer.step) if compile_step else optimizer.step
    for _, batch in zip(range(steps), cycle(make_loader())):
        optimizer.zero_grad()
        loss_fn(compiled, batch).backward()
        step()
    print(f"loss {full_loss(model):.4f}")
    return model, optimizer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile-step", action="store_true")
    main(**vars(parser.parse_args()))
