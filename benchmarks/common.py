"""What every benchmark shares: machine description, timing statistics, and writing results.

Each benchmark writes ``<out>/<name>.json`` (machine, versions, command, seeds, measurements),
``<out>/<name>.md`` (the table people read) and its PNG plots into one results folder.
``docs/results.md`` is generated from these files (:mod:`benchmarks.report`).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import queue as queue_module
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["command_line", "free_cores", "machine_info", "median_time", "run_isolated", "write_results"]


def machine_info() -> dict[str, Any]:
    """Where a measurement was taken: CPU, core count, torch version and threads, GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        import torch_geometric

        info["torch_geometric"] = torch_geometric.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def free_cores() -> int:
    """Cores not busy with other work, judged from the 1-minute load average (at least 1).

    On a shared machine, intra-op threads on oversubscribed cores wait for each other and make
    small operations many times slower; benchmarks use this as their default thread count.
    """
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - int(os.getloadavg()[0])))


def command_line() -> str:
    """The command that is running, to print next to its results."""
    module = sys.modules["__main__"].__spec__
    head = f"python -m {module.name}" if module is not None else f"python {sys.argv[0]}"
    return " ".join([head, *map(shlex.quote, sys.argv[1:])])


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1, sync: Callable[[], None] = lambda: None) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _isolated_child(fn: Callable[..., Any], args: tuple, threads: int, queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    queue.put(fn(*args))


def run_isolated(fn: Callable[..., Any], *args: Any, threads: int) -> Any:
    """``fn(*args)`` in a fresh spawned process with ``threads`` torch threads, so that memory
    high-water marks and caches are its own. ``fn`` must be a module-level function."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_isolated_child, args=(fn, args, threads, queue))
    proc.start()
    while True:  # read before join (a large result blocks the child until read); stop if it died
        try:
            result = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(
                    f"benchmark {getattr(fn, '__name__', fn)}{args} failed with exit code {proc.exitcode}"
                ) from None
    proc.join()
    return result


def write_results(out: Path, name: str, record: dict[str, Any], markdown: str) -> None:
    """Write ``name.json`` (``record`` plus machine and command, unless it has them) and ``name.md``;
    print the table."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "command": command_line(), "machine": machine_info(), **record}  # a record
    # rebuilt from saved runs keeps the command and machine that produced them
    (out / f"{name}.json").write_text(json.dumps(record, indent=2))
    machine = record["machine"]
    gpu = f", GPU {machine['gpu']}" if "gpu" in machine else ""
    header = (f"## {name}\n\nCommand: `{record['command']}`  \nMachine: {machine['cpu']}, {machine['cores']} "
              f"cores{gpu}, torch {machine['torch']}, {machine['date']}\n\n")
    (out / f"{name}.md").write_text(header + markdown + "\n")
    print(header + markdown)
    print(f"results: {out / (name + '.json')}, {out / (name + '.md')}")
