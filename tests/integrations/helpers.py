"""Small helpers shared by the integration tests."""

from __future__ import annotations

import torch
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from toy import loss_fn, make_loader, make_model

from l2o import NeuralGraphOpt


def params_of(model: nn.Module) -> list[torch.Tensor]:
    """Detached copies of ``model``'s parameters."""
    return [p.detach().clone() for p in model.parameters()]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """Bit-identical lists of tensors."""
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """Equal up to float32 rounding (different summation orders)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def tensor_leaves(tree: object) -> list[torch.Tensor]:
    """The tensors in a pytree (e.g. an optimizer state dict), in order."""
    return [x for x in torch.utils._pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def full_batch_reference(batch_size: int, epochs: int = 2, max_norm: float | None = None) -> list[torch.Tensor]:
    """Parameters after a plain one-process loop over the toy loader with ``batch_size``: what
    data-parallel or gradient-accumulating runs with the same global batch match up to rounding."""
    model = make_model()
    opt = NeuralGraphOpt(model.parameters(), model=model)
    for _ in range(epochs):
        for batch in make_loader(batch_size):
            opt.zero_grad()
            loss_fn(model, batch).backward()
            if max_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            opt.step()
    return params_of(model)


def reset_accelerate() -> None:
    """Forget accelerate's process-wide singletons, as a new process would."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
