"""NeuralGraphOpt through ``accelerate`` in one process: prepare, accumulate, save/load state.
(Two processes: ``test_distributed.py``.)"""

from __future__ import annotations

from collections.abc import Iterator

import accelerate_loop
import pytest
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from torch.optim.optimizer import register_optimizer_step_post_hook
from toy import make_model

from l2o import NeuralGraphOpt
from tests.integrations.helpers import (
    assert_close,
    assert_same,
    full_batch_reference,
    params_of,
    reset_accelerate,
    tensor_leaves,
)


@pytest.fixture(autouse=True)
def _fresh_accelerate() -> Iterator[None]:
    reset_accelerate()
    yield
    reset_accelerate()


def test_prepare_and_accumulate_match_one_big_batch():
    steps = []
    hook = register_optimizer_step_post_hook(lambda opt, *_: steps.append(opt))
    try:
        _, model, optimizer = accelerate_loop.main(epochs=2)
    finally:
        hook.remove()
    assert isinstance(optimizer, AcceleratedOptimizer) and isinstance(optimizer.optimizer, NeuralGraphOpt)
    batch = accelerate_loop.MICRO_BATCH * accelerate_loop.ACCUMULATE
    assert len([s for s in steps if s is optimizer.optimizer]) == 2 * 256 // batch
    assert_close(params_of(model), full_batch_reference(batch, max_norm=accelerate_loop.MAX_GRAD_NORM))


def test_save_state_and_load_state_restore_the_optimizer(tmp_path):
    accelerator, model, optimizer = accelerate_loop.main(epochs=1)
    accelerator.save_state(str(tmp_path))
    reset_accelerate()
    fresh = make_model(seed=1)
    accelerator = Accelerator()
    fresh, fresh_optimizer = accelerator.prepare(fresh, NeuralGraphOpt(fresh.parameters(), model=fresh))
    accelerator.load_state(str(tmp_path))
    assert_same(params_of(fresh), params_of(model))
    assert_same(tensor_leaves(fresh_optimizer.state_dict()), tensor_leaves(optimizer.state_dict()))
