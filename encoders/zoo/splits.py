"""Deterministic seeds and train/val/test assignment for zoo records.

Splits are drawn per *group* (the source image of an INR, the architecture of a CNN), so all
records of one group land in the same split and no image or architecture leaks across splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

__all__ = ["DEFAULT_FRACTIONS", "assign_splits", "derive_seed"]

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (stable across processes and runs)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def assign_splits(n_groups: int, fractions: Mapping[str, float] = DEFAULT_FRACTIONS, seed: int = 0) -> list[str]:
    """Split name of each of ``n_groups`` groups.

    Groups are shuffled with ``seed`` and cut in the order of ``fractions`` (normalised to sum 1;
    sizes rounded, the last split takes the remainder).
    """
    if not fractions or min(fractions.values()) < 0 or sum(fractions.values()) <= 0:
        raise ValueError(f"split fractions must be non-negative with a positive sum, got {dict(fractions)}")
    total = sum(fractions.values())
    order = torch.randperm(n_groups, generator=torch.Generator().manual_seed(derive_seed("splits", seed)))
    names = [""] * n_groups
    start = 0
    for k, (name, fraction) in enumerate(fractions.items()):
        stop = n_groups if k == len(fractions) - 1 else min(n_groups, start + round(n_groups * fraction / total))
        for g in order[start:stop].tolist():
            names[g] = name
        start = stop
    return names
