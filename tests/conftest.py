"""Settings shared by every test: offline Hugging Face, one intra-op thread.

The tests use tiny tensors; on a busy 2-core machine intra-op threads make them 10-40x slower
(OpenMP threads wait for each other), so each test module runs single-threaded and restores the
thread count afterwards. No test may touch the network.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
