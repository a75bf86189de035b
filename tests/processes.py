"""Running multi-process tests without forking the pytest process."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

import pytest

LAUNCH_TIMEOUT_S = 600


def run_in_spawned_launcher(target: Callable[..., Any], args: tuple, what: str) -> None:
    """``target(*args)`` in a freshly spawned process, which may fork workers of its own.

    Forking the pytest process, which earlier tests leave with helper threads (compile pools, other
    libraries' thread pools), deadlocked now and then; a launcher still running after
    :data:`LAUNCH_TIMEOUT_S` fails the test instead of hanging the suite.
    """
    launcher = multiprocessing.get_context("spawn").Process(target=target, args=args)
    launcher.start()
    launcher.join(LAUNCH_TIMEOUT_S)
    if launcher.is_alive():
        launcher.kill()
        pytest.fail(f"{what} did not finish within {LAUNCH_TIMEOUT_S} s")
    assert launcher.exitcode == 0, f"{what} failed (exit code {launcher.exitcode})"
