"""NeuralGraphOpt with ``torch.compile``'d models."""

from __future__ import annotations

import compile_loop
import pytest
import torch
from toy import loss_fn, make_loader, make_model

from l2o import NeuralGraphOpt
from tests.integrations.helpers import assert_close, params_of


def test_model_argument_unwraps_the_compiled_module():
    model = make_model()
    compiled = torch.compile(model)  # lazy: nothing is compiled here
    opt = NeuralGraphOpt(compiled.parameters(), model=compiled)
    assert opt.model is model
    plain = NeuralGraphOpt(model.parameters(), model=model)
    assert opt.state_dict()["params"] == plain.state_dict()["params"]
    plain.load_state_dict(opt.state_dict())


@pytest.mark.slow
def test_compiled_model_trains_like_eager():
    model, _ = compile_loop.main(steps=4)
    eager = make_model()
    opt = NeuralGraphOpt(eager.parameters(), model=eager)
    for _, batch in zip(range(4), make_loader()):
        opt.zero_grad()
        loss_fn(eager, batch).backward()
        opt.step()
    assert_close(params_of(model), params_of(eager))
