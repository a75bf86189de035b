"""NeuralGraphOpt in a plain PyTorch loop: schedulers, clipping, accumulation, zero_grad modes,
frozen / late-added / tied / intermittently unused parameters, and checkpoints across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import plain_loop
import torch
from torch import nn
from toy import full_loss, loss_fn, make_dataset, make_model

from l2o import NeuralGraphOpt
from tests.integrations.conftest import EXAMPLES
from tests.integrations.helpers import assert_close, assert_same, params_of, tensor_leaves

BATCH = make_dataset(32).tensors


def _step(model: nn.Module, opt: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...] = BATCH) -> None:
    opt.zero_grad()
    loss_fn(model, batch).backward()
    opt.step()


def test_checkpoint_resumes_bit_identically_in_a_new_process(tmp_path):
    every = plain_loop.CHECKPOINT_EVERY
    straight = plain_loop.main(steps=2 * every, checkpoint_dir=str(tmp_path / "a"))
    assert full_loss(straight) < full_loss(make_model())
    script = [sys.executable, str(EXAMPLES / "plain_loop.py"), "--steps", str(2 * every)]
    resume = ["--resume", str(tmp_path / "a" / f"step_{every}.pt"), "--checkpoint-dir", str(tmp_path / "b")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(script + resume, check=True, env=env, capture_output=True)
    a, b = (torch.load(tmp_path / d / f"step_{2 * every}.pt", weights_only=True) for d in "ab")
    assert_same(list(b["model"].values()), params_of(straight))
    assert_same(tensor_leaves(a["optimizer"]), tensor_leaves(b["optimizer"]))


def test_warmup_cosine_schedule_sets_the_lr_used_by_step():
    model, manual = make_model(), make_model()
    opt, manual_opt = NeuralGraphOpt(model.parameters()), NeuralGraphOpt(manual.parameters())
    sgd = torch.optim.SGD(make_model().parameters(), lr=1.0)
    schedulers = [plain_loop.make_scheduler(o, total_steps=10) for o in (opt, sgd)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for _ in range(10):
            assert opt.param_groups[0]["lr"] == sgd.param_groups[0]["lr"]
            manual_opt.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
            _step(model, opt)
            _step(manual, manual_opt)
            sgd.step()
            for scheduler in schedulers:
                scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.0
    assert_same(params_of(model), params_of(manual))


def test_accumulation_clipping_and_zeroed_grads_match_one_big_batch():
    runs = []
    for chunks in (1, 4):
        model = make_model()
        opt = NeuralGraphOpt(model.parameters())
        for _ in range(3):
            for batch in zip(*(t.chunk(chunks) for t in BATCH)):
                (loss_fn(model, batch) / chunks).backward()
            assert nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.1) > 0.1
            opt.step()
            opt.zero_grad(set_to_none=chunks == 1)  # zero tensors or None: the same steps
        runs.append(params_of(model))
    assert_close(*runs)


def test_frozen_parameters_passed_or_not_and_unfrozen_later():
    for passed in (True, False):
        model = make_model()
        model[0].requires_grad_(False)
        frozen = params_of(model[0])
        opt = NeuralGraphOpt(model.parameters() if passed else model[2].parameters(), model=model)
        for _ in range(3):
            _step(model, opt)
        assert_same(frozen, params_of(model[0]))
        assert full_loss(model) < full_loss(make_model())
    model[0].requires_grad_(True)  # unfreeze mid-training: add the layer as a new group
    opt.add_param_group({"params": model[0].parameters(), "lr": 0.5})
    head = params_of(model[2])
    _step(model, opt)
    assert all(not torch.equal(a, b) for a, b in zip(frozen + head, params_of(model)))


class TiedLM(nn.Module):
    """A tiny language model whose output layer reuses the embedding matrix."""

    def __init__(self, vocab: int = 12, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


def test_tied_weights_are_one_parameter_and_stay_tied():
    torch.manual_seed(0)
    model = TiedLM()
    opt = NeuralGraphOpt(model.parameters(), model=model)
    tokens = torch.randint(0, 12, (32,))
    targets = (tokens + 1) % 12

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(tokens), targets)

    before = loss().item()
    for _ in range(5):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert model.head.weight is model.embed.weight
    assert [p["name"] for p in opt.state_dict()["params"]] == ["embed.weight", "mix.weight", "mix.bias"]
    assert loss().item() < before


class TwoHeads(nn.Module):
    """A shared trunk with two task heads, used on alternate steps."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = make_model()[0]
        self.heads = nn.ModuleList([nn.Linear(32, 1), nn.Linear(32, 1)])

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.heads[task](torch.tanh(self.trunk(x)))


def test_parameters_without_gradient_on_some_steps_are_left_alone():
    model = TwoHeads()
    opt = NeuralGraphOpt(model.parameters(), model=model)
    start = params_of(model)
    x, y = BATCH
    for step in range(4):
        task = step % 2
        idle = params_of(model.heads[1 - task])
        opt.zero_grad()
        nn.functional.mse_loss(model(x, task), y).backward()
        opt.step()
        assert_same(idle, params_of(model.heads[1 - task]))
    assert all(not torch.equal(a, b) for a, b in zip(start, params_of(model)))
