"""NeuralGraphOpt in ``transformers.Trainer``: training, checkpoint and resume (CPU, offline)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="transformers is not installed (pip install -e .[integrations])")

import hf_trainer  # noqa: E402
import torch  # noqa: E402

from l2o import NeuralGraphOpt  # noqa: E402
from tests.integrations.helpers import assert_same, params_of  # noqa: E402


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory):
    """150 steps in one go, checkpointing at 75 and 150 (the default rule's Prodigy step size starts at
    1e-6: on this tiny model the loss barely moves for 60 steps, then falls from 3.2 to 0.02)."""
    return hf_trainer.main(str(tmp_path_factory.mktemp("straight")), max_steps=150, save_steps=75)


def test_trainer_uses_neural_graph_opt_and_loss_decreases(straight):
    assert isinstance(straight.optimizer.optimizer, NeuralGraphOpt)  # inside accelerate's wrapper
    losses = [entry["loss"] for entry in straight.state.log_history if "loss" in entry]
    assert len(losses) == 150 and losses[-1] < losses[0] - 1


def test_resume_from_checkpoint_restores_the_optimizer(straight, tmp_path):
    checkpoint = f"{straight.args.output_dir}/checkpoint-75"
    saved = torch.load(f"{checkpoint}/optimizer.pt", weights_only=True)
    assert set(saved) == set(straight.optimizer.state_dict())
    resumed = hf_trainer.main(str(tmp_path), max_steps=150, save_steps=75, resume=checkpoint)
    assert resumed.state.global_step == 150
    assert_same(params_of(resumed.model), params_of(straight.model))
