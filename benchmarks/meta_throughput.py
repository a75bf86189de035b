"""Meta-training throughput: inner steps per second, one instance at a time against vectorized.

``N`` instances of one inner problem (Celo's meta-training task: an MLP 64-32-10 on 8x8 digits,
batch 32; they differ in initial weights and data stream) take ``K`` inner steps under an update
rule, in two ways measured in the same process:

* ``per-instance``: what ``TruncatedStep.unroll`` does for each slot: the loss and
  ``torch.autograd.grad``, then :func:`~l2o.functional.learned_step`, instance after instance;
* ``vectorized``: :class:`l2o.meta.vectorized.VectorizedStep`, one vmapped call for all ``N``;
  in ``forward`` mode also ``compiled`` (the same through ``torch.compile``; its compile time is
  in the warm-up run, not in the figures).

Each in two modes: ``forward`` (no meta-gradient: what ES and PES unroll) and ``tbptt`` (the
unroll with the graph to the meta-parameters, then the backward pass of the mean training loss
over the truncation). Reported: inner steps per second (``N * K`` over the median time of a
truncation) and the ratio vectorized / per-instance. One thread unless ``--threads``.

``--trainer`` measures what meta-training itself gains: :class:`~l2o.meta.MetaTrainer` steps of
``--estimator`` (default PES, Celo's estimator; ``tbptt`` is first order) over ``--slots`` task
slots of that inner problem, truncations of ``--unroll`` steps over episodes log-uniform in
100-2000 steps (slots at random offsets, so some truncations end early and run in smaller
groups), with ``TruncatedStep`` per instance, vectorized and (ES, PES) vectorized + compiled,
meta-step after meta-step in one process. Reported: inner steps per second (two runs per slot
under ES and PES) over the median meta-step.

    python -m benchmarks.meta_throughput                 # N = 1, 8, 32, 128; both rules, both modes
    python -m benchmarks.meta_throughput --trainer --slots 8 32   # the meta-trainer, vectorize off / on
    python -m benchmarks.meta_throughput --processes --slots 8   # l2o meta-train on 1 and on 2 processes
    python -m benchmarks.meta_throughput --quick         # N = 1, 8; forward only; seconds

``--processes`` runs ``l2o meta-train`` (PES over ``--slots`` slots of the same inner problem, the
``neural-graph-stepsize`` rule, without and with ``inner.vectorize``) once in one process and once
through ``accelerate launch --num_processes 2`` (gloo on the CPU, one thread each), and reports
meta-gradients per second (slots per median meta-step) of both and their ratio: what a second
process buys. The two runs take turns
on the machine, so they need it to themselves.

Writes ``meta_throughput.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import command_line, median_time, write_results
from l2o.functional import learned_step
from l2o.hub import load_rule
from l2o.meta import MetaTrainer
from l2o.meta.estimators import ESTIMATORS
from l2o.meta.tasks.image import MLPFamily
from l2o.meta.truncated_step import TruncatedStep, loss_and_grads
from l2o.meta.truncation import LogUniformSchedule
from l2o.meta.vectorized import VectorizedStep, stack_batches, stack_instances, stack_states

RULES = ("neural-graph-v5", "ff")
MODES = ("forward", "tbptt")


def _truncation(rule: Any, tasks: list, names: list[str], params: list[torch.Tensor], context: Any,
                vectorized: VectorizedStep | None, tbptt: bool, steps: int) -> None:
    """``steps`` inner steps of every instance from their initial parameters ``params`` (stacked),
    one by one or through ``vectorized`` (and the meta-backward under tbptt)."""
    meta = {n: p.detach().requires_grad_() for n, p in rule.named_parameters()} if tbptt else None
    states = [rule.init_state([p[i] for p in params]) for i in range(len(tasks))]
    losses = []  # from step 1 on: step 0's loss precedes every update, so it has no meta-gradient
    with torch.set_grad_enabled(tbptt):
        if vectorized is not None:
            state = stack_states(states)
            for step in range(steps):
                loss, params, state = vectorized(params, state, stack_batches(tasks, step), meta)
                if step:
                    losses.append(loss.mean())
        else:
            for i, task in enumerate(tasks):
                p, s = [x[i] for x in params], states[i]
                for step in range(steps):
                    loss, grads = loss_and_grads(task, names, p, task.batch(step), tbptt)
                    p, s = learned_step(rule, p, grads, s, context, meta_params=meta)
                    if step:
                        losses.append(loss / len(tasks))
    if tbptt:
        torch.stack(losses).sum().backward()


def measure(rule_name: str, mode: str, instances: int, steps: int, repeats: int, compiled: bool) -> dict[str, Any]:
    rule = load_rule(rule_name)
    family = MLPFamily(widths=(32,), depths=(1,), activations=("relu",))
    tasks = [family.sample(seed) for seed in range(instances)]
    names, params = stack_instances(tasks)
    context = rule.context_for([p[0] for p in params], tasks[0].model, None)
    row: dict[str, Any] = {"rule": rule_name, "mode": mode, "instances": instances, "steps": steps}
    paths = {"per_instance": None, "vectorized": VectorizedStep(rule, tasks[0], names, context)}
    if compiled and mode == "forward":  # TBPTT through the compiled step is untested
        paths["compiled"] = VectorizedStep(rule, tasks[0], names, context, compile=True)
    for path, vectorized in paths.items():
        run = partial(_truncation, rule, tasks, names, params, context, vectorized, mode == "tbptt", steps)
        seconds = median_time(run, repeats)  # the warm-up run compiles
        row[f"{path}_s"] = seconds
        row[f"{path}_steps_per_s"] = instances * steps / seconds
    for path in paths:
        row[f"{path}_speedup"] = row[f"{path}_steps_per_s"] / row["per_instance_steps_per_s"]
    return row


TRAINER_PATHS = {"per_instance": {}, "vectorized": {"vectorize": True},
                 "compiled": {"vectorize": True, "compile": True}}


def measure_trainer(rule_name: str, estimator: str, slots: int, unroll: int, meta_steps: int,
                    compiled: bool) -> dict[str, Any]:
    """Median seconds per meta-step of ``estimator`` over ``slots`` slots on each path, meta-step after meta-step."""
    trainers = {}
    for path, options in TRAINER_PATHS.items():
        if path == "compiled" and (not compiled or estimator == "tbptt"):  # compiling is for forward unrolls
            continue
        step = TruncatedStep(load_rule(rule_name), MLPFamily(widths=(32,), depths=(1,), activations=("relu",)),
                             LogUniformSchedule(100, 2000), unroll_length=unroll, initial_offset=2000,
                             second_order=False, **options)
        trainers[path] = MetaTrainer(ESTIMATORS[estimator](step), n_tasks=slots)
    runs_per_slot = 1 if estimator == "tbptt" else 2
    times: dict[str, list[float]] = {path: [] for path in trainers}
    inner: dict[str, list[int]] = {path: [] for path in trainers}
    for i in range(meta_steps + 1):  # the first meta-step warms up (task contexts, allocations, compiling)
        for path, trainer in trainers.items():
            start = time.perf_counter()
            result = trainer.step(collect_curves=True)
            if i:
                times[path].append(time.perf_counter() - start)
                inner[path].append(runs_per_slot * sum(len(c["losses"]) for c in result.curves))
    row: dict[str, Any] = {"rule": rule_name, "mode": f"{estimator} trainer", "instances": slots, "steps": unroll}
    for path in trainers:
        row[f"{path}_s"] = statistics.median(times[path])
        row[f"{path}_steps_per_s"] = statistics.median(inner[path]) / row[f"{path}_s"]
    for path in trainers:
        row[f"{path}_speedup"] = row[f"{path}_steps_per_s"] / row["per_instance_steps_per_s"]
    return row


def measure_processes(slots: int, unroll: int, meta_steps: int, vectorize: bool) -> dict[str, Any]:
    """Median seconds per meta-step of ``l2o meta-train`` on one process and on two (accelerate)."""
    import yaml

    from l2o.meta.metrics import read_metrics

    config = {"rule": {"name": "neural-graph-stepsize"},
              "tasks": [{"family": "mlp", "widths": [32], "depths": [1], "activations": ["relu"]}],
              "estimator": {"name": "pes"}, "inner": {"vectorize": vectorize},
              "truncation": {"schedule": "log_uniform", "min_length": 100, "max_length": 2000,
                             "unroll_length": unroll, "initial_offset": 2000},
              "n_tasks": slots, "steps": meta_steps + 1, "checkpoint_every": meta_steps + 1, "progress": False}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    launchers = {1: [sys.executable],
                 2: [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]}
    row: dict[str, Any] = {"slots": slots, "unroll": unroll, "vectorize": vectorize}
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "config.yaml").write_text(yaml.safe_dump(config))
        for processes, launcher in launchers.items():
            run_dir = Path(work) / f"run{processes}"
            subprocess.run([*launcher, "-m", "l2o", "meta-train", "--config", str(Path(work) / "config.yaml"),
                            "--run-dir", str(run_dir)], env=env, check=True, stdout=subprocess.DEVNULL)
            seconds = statistics.median(r["seconds"] for r in read_metrics(run_dir / "metrics.jsonl")[1:])
            row[f"p{processes}_s"] = seconds
            row[f"p{processes}_meta_grads_per_s"] = slots / seconds
    row["speedup"] = row["p2_meta_grads_per_s"] / row["p1_meta_grads_per_s"]
    return row


def cell(row: dict[str, Any], path: str) -> str:
    """``path``'s steps/s and its ratio to the per-instance path ("-" where it was not measured)."""
    return f"{row[f'{path}_steps_per_s']:.0f} ({row[f'{path}_speedup']:.1f}x)" if f"{path}_s" in row else "-"


PROBLEM = "Inner problem: MLP 64-32-10 (ReLU) on 8x8 digits, batch 32"
STEP_NOTE = f"{PROBLEM}; inner steps per second over a truncation of the steps shown, medians."
TRAINER_NOTE = (f"{PROBLEM}. Instances: task slots (two inner runs each under ES and PES, one under first-order "
                "truncated backprop); inner steps per second over the "
                "median meta-step of ``MetaTrainer`` with ``TruncatedStep(vectorize=False)`` (per-instance), "
                "``vectorize=True`` (vectorized) and ``vectorize=True, compile=True``, measured meta-step after "
                "meta-step in one process (compiling happens in the warm-up meta-step, and again when an "
                "episode end first leaves a group of a new size).")


def markdown(rows: list[dict[str, Any]], note: str = STEP_NOTE) -> str:
    lines = ["| rule | mode | instances | per-instance steps/s | vectorized steps/s (x per-instance) "
             "| vectorized + compiled |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['rule']} | {r['mode']} | {r['instances']} | {r['per_instance_steps_per_s']:.0f} | "
              f"{cell(r, 'vectorized')} | {cell(r, 'compiled')} |" for r in rows]
    return "\n".join(lines) + "\n\n" + note


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1, 8, forward only, 1 repeat")
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--rules", nargs="+", default=list(RULES))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--steps", type=int, default=10, help="inner steps per truncation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled vectorized path (forward mode)")
    parser.add_argument("--trainer", action="store_true",
                        help="measure meta-steps of the trainer (one by one, vectorized, compiled) instead")
    parser.add_argument("--processes", action="store_true",
                        help="measure l2o meta-train on 1 and on 2 processes (accelerate) instead")
    parser.add_argument("--slots", type=int, nargs="+", default=[8, 32], help="task slots (--trainer)")
    parser.add_argument("--estimator", choices=["pes", "es", "tbptt"], default="pes",
                        help="estimator of the --trainer runs (tbptt: first order, no compiled path)")
    parser.add_argument("--unroll", type=int, default=50, help="inner steps per truncation (--trainer)")
    parser.add_argument("--meta-steps", type=int, default=5, help="timed meta-steps per path (--trainer)")
    parser.add_argument("--out", type=Path, default=Path("results/meta_throughput"))
    args = parser.parse_args(argv)
    if args.quick:
        args.instances, args.modes, args.steps, args.repeats, args.no_compile = [1, 8], ["forward"], 3, 1, True
    torch.set_num_threads(args.threads)
    print(command_line())
    rows = []
    if args.processes:
        for slots, vectorize in [(s, v) for s in args.slots for v in (False, True)]:
            row = measure_processes(slots, args.unroll, args.meta_steps, vectorize)
            rows.append(row)
            print(f"PES, {slots} slots, vectorize {vectorize}: 1 process {row['p1_meta_grads_per_s']:.2f}, 2 processes "
                  f"{row['p2_meta_grads_per_s']:.2f} meta-gradients/s ({row['speedup']:.2f}x)", flush=True)
        lines = ["| slots | inner steps per truncation | vectorize | 1 process | 2 processes | ratio |",
                 "|---:|---:|---|---:|---:|---:|"]
        lines += [f"| {r['slots']} | {r['unroll']} | {r['vectorize']} | {r['p1_meta_grads_per_s']:.2f} | "
                  f"{r['p2_meta_grads_per_s']:.2f} | {r['speedup']:.2f}x |" for r in rows]
        note = (f"{PROBLEM}. Meta-gradients (slots) per second over the median meta-step of `l2o meta-train` (PES, "
                "`neural-graph-stepsize`), one process against two through `accelerate launch` (gloo, one thread "
                "each).")
        write_results(args.out, "meta_throughput_processes", {"rows": rows}, "\n".join(lines) + "\n\n" + note)
        return rows
    if args.trainer:
        for rule_name in args.rules:
            for slots in args.slots:
                row = measure_trainer(rule_name, args.estimator, slots, args.unroll, args.meta_steps,
                                      not args.no_compile)
                rows.append(row)
                print(f"{rule_name:16s} {args.estimator} trainer, {slots:3d} slots: per-instance "
                      f"{row['per_instance_steps_per_s']:6.0f}, vectorized {cell(row, 'vectorized')}, "
                      f"compiled {cell(row, 'compiled')} inner steps/s", flush=True)
        name = "meta_throughput_trainer" + ("" if args.estimator == "pes" else f"_{args.estimator}")
        write_results(args.out, name, {"threads": args.threads, "unroll": args.unroll, "rows": rows},
                      markdown(rows, TRAINER_NOTE))
        return rows
    for rule_name in args.rules:
        for mode in args.modes:
            for n in args.instances:
                row = measure(rule_name, mode, n, args.steps, args.repeats, not args.no_compile)
                rows.append(row)
                print(f"{rule_name:16s} {mode:7s} N={n:4d}: per-instance {row['per_instance_steps_per_s']:8.0f}, "
                      f"vectorized {cell(row, 'vectorized')}, compiled {cell(row, 'compiled')} steps/s", flush=True)
    write_results(args.out, "meta_throughput", {"threads": args.threads, "rows": rows}, markdown(rows))
    return rows


if __name__ == "__main__":
    main()
