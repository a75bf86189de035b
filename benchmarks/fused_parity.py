"""The fused step against the reference step on the ``l2o_quality`` tasks: same losses, less time.

Each task is trained for the full ``l2o_quality`` length with the shipped rule, untuned, once with
``NeuralGraphOpt(compile=True)`` and once with ``compile=False`` (same seed, same batches), each in
its own process. The table gives both final training and test losses, their relative difference,
and the training wall time per step (forward, backward and step; the fused run's first step, which
compiles, is reported apart).

The two steps agree to float rounding, not bit for bit, and some training runs amplify rounding
(the loss of a run is a chaotic function of its start). So a third run is the control: the
reference step from initial weights multiplied by ``1 + 1e-7 * noise``, a rounding-sized change.
A fused-vs-reference difference the size of the control's is rounding; a larger one would be a bug.

    python -m benchmarks.fused_parity            # 4 tasks x 1000 steps
    python -m benchmarks.fused_parity --quick    # 2 tasks x 100 steps
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks import l2o_quality
from benchmarks.common import run_isolated, write_results
from benchmarks.l2o_quality import TASKS, run

KINDS = {"reference": "NeuralGraphOpt reference", "fused": "NeuralGraphOpt", "control": "NeuralGraphOpt reference"}


def _perturbed(make_optimizer: Callable) -> Callable:
    """``make_optimizer`` that first multiplies the model's weights by ``1 + 1e-7 * noise`` (seeded)."""
    def make(spec: tuple[str, float], model: torch.nn.Module, *args: Any) -> torch.optim.Optimizer:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=gen))
        return make_optimizer(spec, model, *args)
    return make


def timed_run(task: str, kind: str, seed: int, steps: int, perturb: bool = False) -> dict[str, Any]:
    """:func:`benchmarks.l2o_quality.run` with wall times: the first step, and the rest per step;
    ``perturb``: start from rounding-perturbed weights (the control)."""
    if perturb:
        l2o_quality.make_optimizer = _perturbed(l2o_quality.make_optimizer)  # in this process only
    start = time.perf_counter()
    run(task, (kind, 1.0), seed, 1, None)  # the fused step compiles here (cached for the run below)
    first = time.perf_counter() - start
    start = time.perf_counter()
    result = run(task, (kind, 1.0), seed, steps, None)
    return {**result, "first_run_s": first, "per_step_s": (time.perf_counter() - start) / steps}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("results/fused_parity"))
    args = parser.parse_args(argv)
    tasks = TASKS[2:] if args.quick else TASKS
    steps = args.steps or (100 if args.quick else 1000)
    from tqdm.auto import tqdm

    rows = []
    for task in tqdm(tasks, desc="tasks"):
        runs = {name: run_isolated(timed_run, task, kind, 0, steps, name == "control", threads=1)
                for name, kind in KINDS.items()}
        row = {"task": task}
        for name, r in runs.items():
            row.update({f"{name}_train": r["train"][-1], f"{name}_test": r["test"][-1],
                        f"{name}_per_step_s": r["per_step_s"], f"{name}_first_s": r["first_run_s"]})
        for other in ("fused", "control"):
            for split in ("train", "test"):
                row[f"{other}_{split}_rel_diff"] = (abs(row[f"{other}_{split}"] - row[f"reference_{split}"])
                                                    / abs(row[f"reference_{split}"]))
        rows.append(row)
    lines = ["| task | train loss ref / fused / control | rel. diff fused / control | test loss ref / fused / "
             "control | rel. diff fused / control | ms per training step ref / fused | fused first step s |",
             "|---|---|---:|---|---:|---|---:|"]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['reference_train']:.5g} / {r['fused_train']:.5g} / {r['control_train']:.5g} | "
            f"{r['fused_train_rel_diff']:.1e} / {r['control_train_rel_diff']:.1e} | "
            f"{r['reference_test']:.5g} / {r['fused_test']:.5g} / {r['control_test']:.5g} | "
            f"{r['fused_test_rel_diff']:.1e} / {r['control_test_rel_diff']:.1e} | "
            f"{r['reference_per_step_s'] * 1e3:.1f} / {r['fused_per_step_s'] * 1e3:.1f} | {r['fused_first_s']:.1f} |")
    markdown = (f"{steps} steps, seed 0, one thread, the shipped rule untuned. Training loss is the mean over the "
                "last 20 steps; test loss the mean of 4 test batches at the end. 'control' is the reference step "
                "from weights multiplied by 1 + 1e-7 * noise: how far a rounding-sized change moves each task. "
                "A training step is the forward, backward and optimizer step together.\n\n" + "\n".join(lines))
    record = {"quick": args.quick, "steps": steps, "rows": rows}
    write_results(args.out, "fused_parity", record, markdown)
    return record


if __name__ == "__main__":
    main()
