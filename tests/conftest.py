"""Settings shared by every test: offline Hugging Face, a single intra-op thread, and no compiling
unless a test asks for it (a compilation costs seconds per parameter shape).

The tests use tiny tensors: on a busy 2-core machine, intra-op threads mostly wait for each other
(10-40x slower). A single thread from the start also keeps the OpenMP pool from ever holding
several threads, which a forked child (the multi-process tests fork) could deadlock on.
No test may touch the network.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["L2O_COMPILE"] = "0"  # compile="auto" runs the reference step; tests/l2o/test_fused.py compiles

import torch  # noqa: E402

torch.set_num_threads(1)
