"""Atomic single-file checkpoints: safetensors for the tensors, JSON (in the header) for the rest.

A checkpoint is written to ``<path>.tmp``, flushed to disk and moved over ``<path>`` with
``os.replace``, so a process killed at any moment leaves either the previous or the new checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from l2o.meta.serialize import decode, encode

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "l2o.meta.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, truncated, or from an incompatible run."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (see :mod:`l2o.meta.serialize` for what it may contain) atomically to ``path``."""
    path = Path(path)
    skeleton, tensors = encode(state)
    metadata = {"format": CHECKPOINT_FORMAT, "state": json.dumps(skeleton)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, its tensors onto ``device``;
    :class:`CheckpointError` if it is not one."""
    path = Path(path)
    hint = "delete it (or the run folder) or start with resume=False"
    try:
        tensors = load_file(str(path), device=str(torch.device(device)))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt: {error}); {hint}") from error
    if metadata.get("format") != CHECKPOINT_FORMAT or "state" not in metadata:
        raise CheckpointError(
            f"{path} is not an l2o meta-training checkpoint (format {metadata.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r}); {hint}"
        )
    try:
        return decode(json.loads(metadata["state"]), tensors)
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} has a corrupt state description ({error}); {hint}") from error
