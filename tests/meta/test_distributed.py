"""Two CPU processes (gloo, accelerate.debug_launcher) give bitwise the same run as one process.

``debug_launcher`` forks its workers. Forking the pytest process, which earlier tests have left
with helper threads (thread pools of other libraries), deadlocked now and then, so the workers are
forked from a freshly spawned launcher process instead, and a launcher that hangs fails the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import debug_launcher

from l2o.meta import meta_train
from l2o.meta.checkpoint import load_checkpoint
from l2o.meta.metrics import read_metrics
from l2o.meta.tasks import load_image_data
from tests.meta.runs import assert_same_state, small_config, without_timing
from tests.processes import run_in_spawned_launcher


def _train_in_child(config: dict, run_dir: str) -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # forked: drop the parent's single-process state
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    meta_train(config, run_dir, accelerator=accelerator)
    marker = Path(run_dir) / f"rank{accelerator.process_index}-of-{accelerator.num_processes}"
    marker.write_text(str(accelerator.distributed_type))


def _launch_two(config: dict, run_dir: str) -> None:
    torch.manual_seed(0)  # the global generator the checkpoints record, as in the one-process run
    load_image_data("digits")  # load once here; the forked children inherit the cache
    debug_launcher(_train_in_child, args=(config, run_dir), num_processes=2)


@pytest.mark.parametrize("estimator", ["pes", "tbptt"])
def test_two_processes_equal_one_process(tmp_path, estimator):
    config = small_config(estimator={"name": estimator}, n_tasks=4, steps=4, checkpoint_every=2)
    run_in_spawned_launcher(_launch_two, (config, str(tmp_path / "two")), "two-process meta-training")
    torch.manual_seed(0)
    single = meta_train(config, tmp_path / "one")

    assert sorted(p.name for p in (tmp_path / "two").glob("rank*")) == ["rank0-of-2", "rank1-of-2"]

    checkpoint_two = load_checkpoint(tmp_path / "two" / "checkpoint.safetensors")
    checkpoint_one = load_checkpoint(tmp_path / "one" / "checkpoint.safetensors")
    assert len(checkpoint_two["worker_states"]) == 4  # every slot, gathered from both processes
    assert_same_state(checkpoint_two, checkpoint_one)
    for name, value in single.state_dict().items():
        assert torch.equal(checkpoint_two["rule"][name], value), name
    assert without_timing(read_metrics(tmp_path / "two" / "metrics.jsonl")) == without_timing(
        read_metrics(tmp_path / "one" / "metrics.jsonl")
    )
