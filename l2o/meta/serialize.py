"""Nested training state <-> (JSON skeleton, flat tensor dict), for safetensors checkpoints.

Supported values: tensors, ``None``/bool/int/float/str, lists, tuples, dicts (any hashable JSON
scalar keys) and dataclasses defined in ``l2o``. Tensors become ``{"__tensor__": key}`` entries in
the skeleton and ``key -> tensor`` entries in the flat dict.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from torch import Tensor

__all__ = ["decode", "encode"]

_SCALARS = (type(None), bool, int, float, str)


def encode(obj: Any) -> tuple[Any, dict[str, Tensor]]:
    """Split ``obj`` into a JSON-serialisable skeleton and ``{key: tensor}`` (contiguous copies)."""
    tensors: dict[str, Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, Tensor):
            tensors[path] = x.detach().contiguous().clone()
            return {"__tensor__": path}
        if isinstance(x, _SCALARS):
            return x
        if isinstance(x, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(x)]
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v, f"{path}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: walk(v, f"{path}/{k}") for k, v in x.items()}
            return {"__items__": [[k, walk(v, f"{path}/{k}")] for k, v in x.items()]}
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            cls = type(x)
            fields = {f.name: walk(getattr(x, f.name), f"{path}/{f.name}") for f in dataclasses.fields(x)}
            return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
        raise TypeError(f"cannot serialise {type(x).__name__} at {path or '/'}")

    return walk(obj, ""), tensors


def decode(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(skeleton, list):
        return [decode(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if "__tuple__" in skeleton:
        return tuple(decode(v, tensors) for v in skeleton["__tuple__"])
    if "__items__" in skeleton:
        return {k: decode(v, tensors) for k, v in skeleton["__items__"]}
    if "__dataclass__" in skeleton:
        cls = _dataclass(skeleton["__dataclass__"])
        return cls(**{k: decode(v, tensors) for k, v in skeleton["fields"].items()})
    return {k: decode(v, tensors) for k, v in skeleton.items()}


def _dataclass(path: str) -> type:
    module, _, name = path.partition(":")
    if module != "l2o" and not module.startswith("l2o."):
        raise ValueError(f"refusing to rebuild {path}: only dataclasses from l2o are allowed")
    cls = getattr(importlib.import_module(module), name)
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"{path} is not a dataclass")
    return cls
