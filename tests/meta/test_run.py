"""meta_train end to end: run folder, exact resume, corrupt or foreign checkpoints, NaN meta-losses."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from l2o.hub import from_pretrained
from l2o.meta import ConfigError, MetaTrainer, MetaTrainingDiverged, meta_train
from l2o.meta.checkpoint import CheckpointError, load_checkpoint
from l2o.meta.metrics import read_metrics
from l2o.meta.truncated_step import TruncatedStep
from tests.meta.rules import LogLRRule, MomentumRule, PoisonRule
from tests.meta.runs import RULE, assert_same_state, small_config, without_timing


class Killed(Exception):
    """Stands in for SIGKILL: nothing after it runs (no final checkpoint)."""


def test_run_folder_holds_checkpoint_metrics_plot_and_rule(tmp_path):
    rule = meta_train(small_config(), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "config.yaml",
        "checkpoint.safetensors",
        "metrics.jsonl",
        "meta_training.png",
        "rule",
    }
    assert (tmp_path / "meta_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(math.isfinite(r["meta_loss"]) and not r["skipped"] for r in records)
    inner = [r for r in records if "inner" in r]
    assert [r["step"] for r in inner] == [2, 4, 6, 8] and len(inner[0]["inner"]) == 3
    saved = from_pretrained(tmp_path / "rule")
    assert isinstance(saved, MomentumRule)
    for name, value in rule.state_dict().items():
        assert torch.equal(saved.state_dict()[name], value)
    assert load_checkpoint(tmp_path / "checkpoint.safetensors")["meta_step"] == 8


VECTORIZED = {"inner": {"vectorize": True}, "instances_per_task": 3}  # the reparameterized MLPs run together


@pytest.mark.parametrize(("estimator", "options"), [("tbptt", {}), ("pes", {}), ("tbptt", VECTORIZED),
                                                    ("pes", VECTORIZED)])
def test_resume_after_a_kill_continues_exactly(tmp_path, monkeypatch, estimator, options):
    config = small_config(estimator={"name": estimator}, **options)
    together = TruncatedStep._unroll_together
    groups = []
    monkeypatch.setattr(TruncatedStep, "_unroll_together", lambda self, *a: groups.append(1) or together(self, *a))
    reference = meta_train(config, tmp_path / "reference")
    assert bool(groups) == bool(options)  # the vectorized runs do run slots together

    original_step = MetaTrainer.step

    def dies_after_five(self, *args, **kwargs):
        if self.meta_step == 5:  # checkpoint at 3, metrics logged up to 5
            raise Killed
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(MetaTrainer, "step", dies_after_five)
    with pytest.raises(Killed):
        meta_train(config, tmp_path / "killed")
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.safetensors")["meta_step"] == 3
    assert len(read_metrics(tmp_path / "killed" / "metrics.jsonl")) == 5
    monkeypatch.setattr(MetaTrainer, "step", original_step)
    torch.manual_seed(1234)  # the global RNG state comes from the checkpoint, not from here
    resumed = meta_train(config, tmp_path / "killed")

    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert without_timing(read_metrics(tmp_path / "killed" / "metrics.jsonl")) == without_timing(
        read_metrics(tmp_path / "reference" / "metrics.jsonl")
    )
    assert_same_state(
        load_checkpoint(tmp_path / "killed" / "checkpoint.safetensors"),
        load_checkpoint(tmp_path / "reference" / "checkpoint.safetensors"),
    )


def test_truncated_or_foreign_checkpoint_gives_a_clear_error(tmp_path):
    meta_train(small_config(steps=2), tmp_path)
    path = tmp_path / "checkpoint.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        meta_train(small_config(steps=3), tmp_path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unreadable"):
        meta_train(small_config(steps=3), tmp_path)
    meta_train(small_config(steps=2), tmp_path, resume=False)  # starting afresh overwrites it
    assert load_checkpoint(path)["meta_step"] == 2


def test_checkpoint_of_another_rule_architecture_or_run_is_refused(tmp_path):
    meta_train(small_config(steps=2), tmp_path)
    with pytest.raises(CheckpointError, match="another rule"):
        meta_train(small_config(steps=3, rule={"name": "tests.meta.rules:LogLRRule"}), tmp_path)
    with pytest.raises(CheckpointError, match="another rule"):
        meta_train(small_config(steps=3, rule={"name": RULE, "momentum": 0.9}), tmp_path)
    with pytest.raises(CheckpointError, match=r"different config \(tasks: "):
        meta_train(small_config(steps=3, tasks=[{"family": "quadratic", "dim": 6}]), tmp_path)
    with pytest.raises(CheckpointError, match="'pes' worker states; this run uses 'tbptt'"):
        meta_train(small_config(steps=3, estimator={"name": "tbptt"}), tmp_path)
    assert isinstance(meta_train(small_config(steps=3), tmp_path), MomentumRule)  # the same run resumes


def test_nan_meta_steps_are_skipped_and_training_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = small_config(
        rule={"name": "tests.meta.rules:PoisonRule"},
        estimator={"name": "tbptt"},
        checkpoint_every=2,
        max_consecutive_failures=3,
        steps=10,
    )
    good = meta_train({**config, "steps": 4}, tmp_path)
    monkeypatch.setattr(PoisonRule, "poisoned", True)
    with pytest.raises(MetaTrainingDiverged, match="3 consecutive"):
        meta_train(config, tmp_path)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert checkpoint["meta_step"] == 4
    assert torch.equal(checkpoint["rule"]["log_lr"], good.log_lr.detach())
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["skipped"] for r in records] == [False] * 4 + [True] * 3
    assert all(r["meta_loss"] is None and r["grad_norm"] is None for r in records[4:])
    monkeypatch.setattr(PoisonRule, "poisoned", False)
    assert isinstance(meta_train(config, tmp_path), PoisonRule)  # resumes from step 4 and finishes


def test_a_skipped_step_leaves_the_meta_parameters_and_restarts_diverged_slots(monkeypatch):
    from l2o.meta.build import build_estimator
    from l2o.meta.config import config_from_dict

    config = config_from_dict(small_config(rule={"name": "tests.meta.rules:PoisonRule"}))
    rule = PoisonRule()
    trainer = MetaTrainer(build_estimator(config, rule), n_tasks=2)
    before = rule.log_lr.detach().clone()
    monkeypatch.setattr(PoisonRule, "poisoned", True)
    result = trainer.step()
    assert result.skipped and torch.equal(rule.log_lr.detach(), before)
    assert [state.pos.episode for state in trainer.worker_states] == [1, 1]
    monkeypatch.setattr(PoisonRule, "poisoned", False)
    assert not trainer.step().skipped and not torch.equal(rule.log_lr.detach(), before)


def test_rule_object_must_be_registered(tmp_path):
    class Unregistered(LogLRRule):
        pass

    with pytest.raises(ValueError, match="register_rule"):
        meta_train(small_config(), tmp_path, rule=Unregistered())


@pytest.mark.slow
def test_resume_after_a_real_sigkill_continues_exactly(tmp_path):
    """Kill a meta-training process at an arbitrary moment, resume in this process, compare."""
    config = small_config(tasks=[{"family": "quadratic", "dim": 5}], steps=80, checkpoint_every=7)
    root = Path(__file__).resolve().parents[2]
    script = (
        "import json, sys, torch; torch.set_num_threads(1); from l2o.meta import meta_train; "
        "meta_train(json.loads(sys.argv[1]), sys.argv[2])"
    )
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(config), str(killed)], cwd=root, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(read_metrics(killed / "metrics.jsonl")) < 20 and process.poll() is None:
            assert time.monotonic() < deadline, "the child never got going"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    step_at_kill = load_checkpoint(killed / "checkpoint.safetensors")["meta_step"]
    assert 0 < step_at_kill < 80

    resumed = meta_train(config, killed)
    reference = meta_train(config, tmp_path / "reference")
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert without_timing(read_metrics(killed / "metrics.jsonl")) == without_timing(
        read_metrics(tmp_path / "reference" / "metrics.jsonl")
    )


def _ff_config(estimator: str, tasks: list[dict]) -> dict:
    return small_config(
        rule={"name": "ff", "hidden_size": 8, "learn_decays": True},
        tasks=tasks,
        estimator={"name": estimator},
        outer={"lr": 1e-2},
        n_tasks=2,
        steps=2,
    )


@pytest.mark.parametrize(
    ("estimator", "tasks"),
    [
        ("pes", [{"family": "mlp", "widths": [8], "depths": [1]}, {"family": "quadratic", "dim": 4}]),
        ("tbptt", [{"family": "quadratic", "dim": 4}]),
    ],
)
def test_meta_train_the_ff_rule(tmp_path, estimator, tasks):
    from l2o.ff import FFRule

    initial = FFRule(hidden_size=8, learn_decays=True).state_dict()
    rule = meta_train(_ff_config(estimator, tasks), tmp_path)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert all(math.isfinite(r["meta_loss"]) and r["grad_norm"] > 0 for r in records)
    assert any(not torch.equal(initial[name], value) for name, value in rule.state_dict().items())
    assert isinstance(from_pretrained(tmp_path / "rule"), FFRule)


def test_tbptt_through_the_ff_rule_on_an_mlp(tmp_path):
    config = _ff_config("tbptt", [{"family": "mlp", "widths": [8], "depths": [1]}])
    meta_train({**config, "max_consecutive_failures": 2}, tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_asking_for_cuda_without_a_gpu_names_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="device: 'cuda' was asked for, but torch sees no CUDA device"):
        meta_train(small_config(device="cuda"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' means the GPU there (tests/test_cuda.py)")
def test_auto_device_is_the_cpu_without_a_gpu_and_device_is_no_part_of_a_runs_identity(tmp_path):
    meta_train(small_config(steps=3), tmp_path / "run")
    rule = meta_train(small_config(steps=5, device="auto"), tmp_path / "run")  # resumes despite the new device
    assert next(rule.parameters()).device.type == "cpu"
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4, 5]
