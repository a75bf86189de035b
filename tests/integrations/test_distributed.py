"""Two CPU processes over gloo (one fork per module): DDP and accelerate keep the replicas
identical, and sharded setups (FSDP, FSDP2/DTensor, ZeroRedundancyOptimizer) fail clearly.

The workers are forked from a freshly spawned launcher, not from the pytest process: earlier tests
leave that one with helper threads (torch.compile's compile workers, other libraries' pools), and
forking a process with threads can deadlock (it did, now and then). A launcher that hangs fails
the test instead of the whole suite.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import accelerate_loop
import ddp_loop
import pytest
import torch
import torch.distributed as dist
from toy import make_model

from l2o import NeuralGraphOpt
from tests.integrations.helpers import assert_close, assert_same, full_batch_reference, params_of, reset_accelerate
from tests.processes import run_in_spawned_launcher

WORLD = 2


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: all sockets stay bound until every port is chosen (choosing them
    one at a time can return the same port twice, and two process groups on one port can hang)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _sharding_errors() -> dict[str, str]:
    """What NeuralGraphOpt raises for each sharded setup (inside an initialised process group)."""
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer

    cases: dict[str, Callable[[], Any]] = {
        "fsdp": lambda: NeuralGraphOpt(FullyShardedDataParallel(make_model(), device_id="cpu").parameters()),
        "fsdp2": lambda: NeuralGraphOpt(fully_shard(make_model()).parameters()),
        "zero": lambda: ZeroRedundancyOptimizer(make_model().parameters(), optimizer_class=NeuralGraphOpt),
    }
    errors = {}
    for name, build in cases.items():
        try:
            build()
        except TypeError as err:
            errors[name] = str(err)
    return errors


def _worker(rank: int, ports: list[int], out: Path) -> None:
    """One rank, set up as ``torchrun`` would: the DDP example, then the accelerate example."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1")
    os.environ.update(MASTER_PORT=str(ports[0]), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    results: dict[str, Any] = {"ddp": params_of(ddp_loop.main())}
    os.environ.update(MASTER_PORT=str(ports[1]), ACCELERATE_USE_CPU="1")
    reset_accelerate()  # forget the parent's single-process state
    accelerator, model, _ = accelerate_loop.main()
    results.update(accelerate=params_of(model), processes=accelerator.num_processes, errors=_sharding_errors())
    dist.destroy_process_group()
    torch.save(results, out / f"rank{rank}.pt")


def _launch(ports: list[int], out: Path) -> None:
    torch.multiprocessing.start_processes(_worker, args=(ports, out), nprocs=WORLD, start_method="fork")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ranks")
    ports = _free_ports(2)
    run_in_spawned_launcher(_launch, (ports, out), "the two distributed workers")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_ddp_ranks_take_identical_steps(ranks):
    assert_same(ranks[0]["ddp"], ranks[1]["ddp"])
    assert_close(ranks[0]["ddp"], full_batch_reference(WORLD * ddp_loop.BATCH))


def test_accelerate_processes_take_identical_steps(ranks):
    assert ranks[0]["processes"] == WORLD
    assert_same(ranks[0]["accelerate"], ranks[1]["accelerate"])
    batch = WORLD * accelerate_loop.MICRO_BATCH * accelerate_loop.ACCUMULATE
    assert_close(ranks[0]["accelerate"], full_batch_reference(batch, max_norm=accelerate_loop.MAX_GRAD_NORM))


def test_sharded_setups_fail_with_a_clear_error(ranks):
    errors = ranks[0]["errors"]
    assert "sharded (FSDP flat parameter or DTensor); use DDP" in errors["fsdp"]
    assert "sharded (FSDP flat parameter or DTensor); use DDP" in errors["fsdp2"]
    assert "cannot run inside ZeroRedundancyOptimizer" in errors["zero"]
