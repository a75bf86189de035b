"""Meta-training tests run thousands of tiny ops: one intra-op thread avoids oversubscribing the CPU.
All of them run offline."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread_and_offline():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        yield
    torch.set_num_threads(threads)
