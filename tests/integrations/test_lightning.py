"""NeuralGraphOpt in Lightning: ``configure_optimizers``, fit on CPU, checkpoint and resume."""

from __future__ import annotations

import pytest

pytest.importorskip("lightning", reason="lightning is not installed (pip install -e .[integrations])")

import lightning_fit  # noqa: E402
import torch  # noqa: E402
from toy import full_loss, make_model  # noqa: E402

from l2o import NeuralGraphOpt  # noqa: E402
from tests.integrations.helpers import assert_same, params_of, tensor_leaves  # noqa: E402


def test_fit_then_resume_restores_the_optimizer_state(tmp_path):
    checkpoint = tmp_path / "fit.ckpt"
    trained = lightning_fit.main(max_steps=8, save=str(checkpoint))
    assert full_loss(trained.net) < full_loss(make_model())
    saved = torch.load(checkpoint, weights_only=True)
    restored = lightning_fit.main(max_steps=8, resume=str(checkpoint))  # already at step 8: restores only
    optimizer = restored.trainer.optimizers[0]
    assert isinstance(optimizer, NeuralGraphOpt)
    assert_same(params_of(restored), params_of(trained))
    assert_same(tensor_leaves(optimizer.state_dict()), tensor_leaves(saved["optimizer_states"][0]))
    assert optimizer.param_groups[0]["lr"] == trained.trainer.optimizers[0].param_groups[0]["lr"] < 1.0
