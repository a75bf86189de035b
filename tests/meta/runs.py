"""Shared pieces of the run tests: a small fast config and exact comparisons of runs."""

from __future__ import annotations

from typing import Any

import torch

from l2o.meta.serialize import encode

RULE = "tests.meta.rules:MomentumRule"


def small_config(**overrides: Any) -> dict[str, Any]:
    """PES on quadratics and tiny MLPs (reparameterized), log-uniform episodes, offsets, 3 slots, 8 steps."""
    config = {
        "rule": {"name": RULE, "lr": 0.05},
        "tasks": [{"family": "quadratic", "dim": 5}, {"family": "mlp", "widths": [8], "depths": [1]}],
        "reparam_scale": [0.5, 2.0],
        "estimator": {"name": "pes", "sigma": 0.01},
        "truncation": {
            "schedule": "log_uniform",
            "min_length": 4,
            "max_length": 10,
            "unroll_length": 3,
            "initial_offset": 5,
        },
        "outer": {"lr": 0.01, "lr_schedule": "cosine"},
        "n_tasks": 3,
        "steps": 8,
        "checkpoint_every": 3,
        "log_inner_every": 2,
        "progress": False,
    }
    config.update(overrides)
    return config


def without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics records without their wall-clock field."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def assert_same_state(a: Any, b: Any) -> None:
    """Bitwise equality of two nested training states (structure, scalars and every tensor)."""
    (skeleton_a, tensors_a), (skeleton_b, tensors_b) = encode(a), encode(b)
    assert skeleton_a == skeleton_b
    assert tensors_a.keys() == tensors_b.keys()
    for key in tensors_a:
        assert torch.equal(tensors_a[key], tensors_b[key]), key
