"""accelerate with NeuralGraphOpt: ``accelerator.prepare(model, optimizer, dataloader)`` and gradient
accumulation with ``accelerator.accumulate``. The same script runs on one process or several::

    python examples/accelerate_loop.py
    accelerate launch --num_processes 2 examples/accelerate_loop.py               # 2 GPUs
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 examples/accelerate_loop.py  # 2 CPU processes
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn
from toy import full_loss, loss_fn, make_loader, make_model

from l2o import NeuralGraphOpt

ACCUMULATE = 2  # micro-batches per optimizer step (per process)
MICRO_BATCH = 16
MAX_GRAD_NORM = 1.0


def main(epochs: int = 2) -> tuple[Accelerator, nn.Module, torch.optim.Optimizer]:
    """Train the toy model; returns the accelerator and the prepared model and optimizer."""
    accelerator = Accelerator(gradient_accumulation_steps=ACCUMULATE)
    model = make_model()
    optimizer = NeuralGraphOpt(model.parameters(), model=model)
    model, optimizer, loader = accelerator.prepare(model, optimizer, make_loader(batch_size=MICRO_BATCH))
    for _ in range(epochs):
        for batch in loader:
            with accelerator.accumulate(model):  # optimizer.step / zero_grad only act every ACCUMULATE batches
                accelerator.backward(loss_fn(model, batch))
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                optimizer.zero_grad()
    accelerator.print(f"loss {full_loss(accelerator.unwrap_model(model).cpu()):.4f}")
    return accelerator, model, optimizer


if __name__ == "__main__":
    main()
