"""Map a function over jobs in this process or in a pool of single-threaded worker processes.

Zoo generation is many small independent jobs (a batch of SIRENs, one CNN). On a CPU the fastest
layout is one single-threaded process per core: intra-op threads synchronise at every small kernel
and stall as soon as other programs share the cores (measured: 5-6x slower CNN training with two
threads on two busy cores). Jobs therefore always run single-threaded, so results do not depend on
the number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch

__all__ = ["WorkerPool"]

T = TypeVar("T")
# fork starts workers at once with everything imported (spawn re-imports torch and the package: ~10 s
# on a busy machine); it is safe here because the workers only run single-threaded torch code.
_START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"


def _single_thread() -> None:
    torch.set_num_threads(1)


class WorkerPool:
    """``map`` over jobs, single-threaded: in this process when ``workers == 1``, otherwise in
    ``workers`` processes (forked on Linux, spawned elsewhere), started once and reused. ``fn`` must
    be a module-level function and jobs picklable. Use as a context manager so the processes are
    shut down (terminated on error).
    """

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool = mp.get_context(_START_METHOD).Pool(workers, _single_thread) if workers > 1 else None

    def map(self, fn: Callable[[Any], T], jobs: Iterable[Any]) -> list[T]:
        """``[fn(job) for job in jobs]``, in order."""
        if self._pool is None:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return [fn(job) for job in jobs]
            finally:
                torch.set_num_threads(threads)
        return self._pool.map(fn, list(jobs), chunksize=1)

    def close(self, terminate: bool = False) -> None:
        """Stop the worker processes (at once when ``terminate``)."""
        if self._pool is not None:
            if terminate:
                self._pool.terminate()
            else:
                self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close(terminate=exc_info[0] is not None)
