"""Counter-based randomness: every random draw in meta-training is keyed by what it is for.

Seeds are derived from tuples such as ``(seed, "task", slot, episode)`` instead of being drawn from
a shared generator. Results then do not depend on the order in which things run, on how task slots
are split over processes, or on whether a run was interrupted and resumed.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "generator"]


def derive_seed(*keys: int | str) -> int:
    """A 63-bit seed that is a deterministic function of ``keys`` (stable across processes and runs)."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generator(*keys: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*keys)``."""
    return torch.Generator().manual_seed(derive_seed(*keys))
