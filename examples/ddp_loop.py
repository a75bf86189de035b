"""DistributedDataParallel with NeuralGraphOpt: DDP averages the gradients, so every rank takes the
same step and the replicas stay identical. Launch with torchrun (gloo on CPUs, nccl on GPUs)::

    torchrun --nproc_per_node 2 examples/ddp_loop.py
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from toy import full_loss, loss_fn, make_dataset, make_model

from l2o import NeuralGraphOpt

BATCH = 16  # per rank


def main(epochs: int = 2) -> nn.Module:
    """Train the toy model on every rank of the ``torchrun`` job; returns this rank's (unwrapped) model."""
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    model = DistributedDataParallel(make_model().to(device))  # broadcasts rank 0's initial parameters
    optimizer = NeuralGraphOpt(model.parameters(), model=model)  # build it after moving the model
    sampler = DistributedSampler(make_dataset(), shuffle=False)
    loader = DataLoader(make_dataset(), batch_size=BATCH, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model, (x.to(device), y.to(device))).backward()
            optimizer.step()
    if dist.get_rank() == 0:
        print(f"loss {full_loss(model.module.cpu()):.4f}")
    dist.destroy_process_group()
    return model.module


if __name__ == "__main__":
    main()
