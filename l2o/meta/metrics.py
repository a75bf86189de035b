"""Metrics as JSON lines: one record per meta-step, appended and flushed as training goes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "read_metrics"]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics file (a partial last line, left by a kill, is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


class MetricsLog:
    """Appends records ``{"step": int, ...}`` to a JSONL file.

    Args:
        path: the file.
        keep_until: on opening, drop records with ``step`` above this (the steps after the checkpoint
            being resumed, which will be redone); ``None`` starts a fresh file.
    """

    def __init__(self, path: str | Path, keep_until: int | None = None) -> None:
        self.path = Path(path)
        kept = [r for r in read_metrics(self.path) if r["step"] <= keep_until] if keep_until is not None else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (non-finite floats are written as ``null``)."""
        with open(self.path, "a") as handle:
            handle.write(json.dumps(_finite(record)) + "\n")


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x
