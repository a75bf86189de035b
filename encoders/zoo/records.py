"""How network weights are stored in a zoo record, and back.

Every zoo record holds its network's state dict as three aligned list columns, in state-dict order:

* ``param_names``  ``list[str]``           e.g. ``["layers.0.weight", "layers.0.bias", ...]``
* ``param_shapes`` ``list[list[int32]]``   e.g. ``[[32, 2], [32], ...]``
* ``params``       ``list[list[float32]]`` each parameter flattened row-major

The same layout serves fixed architectures (INR zoos) and mixed ones (CNN zoos).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, List, Value
from torch import Tensor

__all__ = ["WEIGHT_FEATURES", "check_param_shapes", "record_state_dict", "stack_params", "weight_columns"]

WEIGHT_FEATURES = {
    "param_names": List(Value("string")),
    "param_shapes": List(List(Value("int32"))),
    "params": List(List(Value("float32"))),
}


def weight_columns(state_dicts: list[Mapping[str, Tensor]]) -> dict[str, list]:
    """The three weight columns for a list of state dicts."""
    return {
        "param_names": [list(sd) for sd in state_dicts],
        "param_shapes": [[list(t.shape) for t in sd.values()] for sd in state_dicts],
        "params": [[t.detach().reshape(-1).float().numpy() for t in sd.values()] for sd in state_dicts],
    }


def record_state_dict(record: Mapping[str, list]) -> dict[str, Tensor]:
    """State dict of one record (a row of a zoo dataset)."""
    names, shapes, values = record["param_names"], record["param_shapes"], record["params"]
    if not len(names) == len(shapes) == len(values):
        raise ValueError(f"record has {len(names)} names, {len(shapes)} shapes and {len(values)} parameters")
    out = {}
    for name, shape, flat in zip(names, shapes, values):
        if len(flat) != math.prod(shape):
            raise ValueError(f"parameter {name!r} has {len(flat)} values but shape {list(shape)}")
        out[name] = torch.as_tensor(np.asarray(flat, dtype=np.float32)).reshape(shape)
    return out


def check_param_shapes(got: Mapping[str, list[int]], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Raise ``ValueError`` naming ``what`` unless parameter names and shapes match ``expected``."""
    got_t = {k: tuple(v) for k, v in got.items()}
    exp_t = {k: tuple(v) for k, v in expected.items()}
    if got_t != exp_t:
        diff = sorted(set(got_t.items()) ^ set(exp_t.items()))[:4]
        raise ValueError(f"{what}: weights do not match the declared architecture (differences: {diff}); "
                         f"expected {exp_t}")


def stack_params(dataset: Dataset) -> dict[str, Tensor]:
    """All records' parameters stacked: name -> ``[N, *shape]``. The records must share one architecture."""
    if len(dataset) == 0:
        raise ValueError("cannot stack the parameters of an empty zoo")
    names, shapes = dataset[0]["param_names"], dataset[0]["param_shapes"]
    sizes = [math.prod(s) for s in shapes]
    column = dataset.with_format("arrow")["params"]
    per_record = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    inner = per_record.flatten()
    lengths = np.asarray(inner.value_lengths())
    if len(lengths) != len(dataset) * len(sizes) or not (lengths.reshape(len(dataset), -1) == sizes).all():
        raise ValueError("records do not share one architecture; stack the parameters of one architecture at a time")
    flat = torch.from_numpy(np.asarray(inner.flatten(), dtype=np.float32).reshape(len(dataset), -1).copy())
    out, start = {}, 0
    for name, shape, size in zip(names, shapes, sizes):
        out[name] = flat[:, start:start + size].reshape(len(dataset), *shape)
        start += size
    return out
