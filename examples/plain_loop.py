"""A plain PyTorch training loop with NeuralGraphOpt: warmup + cosine learning-rate schedule,
gradient accumulation, gradient clipping, ``zero_grad(set_to_none=True)`` and checkpoint
save / resume. NeuralGraphOpt drops in where ``torch.optim.AdamW`` would be::

    python examples/plain_loop.py --checkpoint-dir ckpts               # checkpoints every 10 steps
    python examples/plain_loop.py --resume ckpts/step_30.pt            # continue from step 30
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from toy import full_loss, loss_fn, make_loader, make_model

from l2o import NeuralGraphOpt

ACCUMULATE = 2  # micro-batches per optimizer step
WARMUP = 5  # optimizer steps of linear warmup
MAX_GRAD_NORM = 1.0
CHECKPOINT_EVERY = 10


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler:
    """Linear warmup from 10% over :data:`WARMUP` steps, then cosine decay to 0 at ``total_steps``."""
    warmup = LinearLR(optimizer, start_factor=0.1, total_iters=WARMUP)
    cosine = CosineAnnealingLR(optimizer, T_max=max(total_steps - WARMUP, 1))
    return SequentialLR(optimizer, [warmup, cosine], milestones=[WARMUP])


def micro_batches(start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless micro-batches from optimizer step ``start_step`` on (so a resumed run sees the same data)."""
    batches = list(make_loader(batch_size=16))
    index = start_step * ACCUMULATE
    while True:
        yield batches[index % len(batches)]
        index += 1


def main(steps: int = 60, lr: float = 1.0, checkpoint_dir: str | None = None, resume: str | None = None) -> nn.Module:
    """Train the toy model for ``steps`` optimizer steps in total (counting those before ``resume``),
    writing ``checkpoint_dir/step_{n}.pt`` every :data:`CHECKPOINT_EVERY` steps."""
    model = make_model()
    optimizer = NeuralGraphOpt(model.parameters(), lr=lr, weight_decay=1e-4, model=model)
    scheduler = make_scheduler(optimizer, steps)
    start = 0
    if resume is not None:
        checkpoint = torch.load(resume, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start = checkpoint["step"]
    data = micro_batches(start)
    for step in range(start, steps):
        for _ in range(ACCUMULATE):
            (loss_fn(model, next(data)) / ACCUMULATE).backward()
        nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % CHECKPOINT_EVERY == 0:
            print(f"step {step + 1}: loss {full_loss(model):.4f}, lr {scheduler.get_last_lr()[0]:.3f}")
            if checkpoint_dir is not None:
                Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
                checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                checkpoint.update(scheduler=scheduler.state_dict(), step=step + 1)
                torch.save(checkpoint, Path(checkpoint_dir) / f"step_{step + 1}.pt")
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--checkpoint-dir", help=f"write a checkpoint here every {CHECKPOINT_EVERY} steps")
    parser.add_argument("--resume", help="continue from this checkpoint")
    main(**vars(parser.parse_args()))
