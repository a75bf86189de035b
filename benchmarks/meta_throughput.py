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

    python -m benchmarks.meta_throughput                 # N = 1, 8, 32, 128; both rules, both modes
    python -m benchmarks.meta_throughput --quick         # N = 1, 8; forward only; seconds

Writes ``meta_throughput.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import command_line, median_time, write_results
from l2o.functional import learned_step
from l2o.hub import load_rule
from l2o.meta.tasks.image import MLPFamily
from l2o.meta.truncated_step import _loss_and_grads
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
                    loss, grads = _loss_and_grads(task, names, p, task.batch(step), tbptt)
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


def cell(row: dict[str, Any], path: str) -> str:
    """``path``'s steps/s and its ratio to the per-instance path ("-" where it was not measured)."""
    return f"{row[f'{path}_steps_per_s']:.0f} ({row[f'{path}_speedup']:.1f}x)" if f"{path}_s" in row else "-"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| rule | mode | instances | per-instance steps/s | vectorized steps/s (x per-instance) "
             "| vectorized + compiled |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['rule']} | {r['mode']} | {r['instances']} | {r['per_instance_steps_per_s']:.0f} | "
              f"{cell(r, 'vectorized')} | {cell(r, 'compiled')} |" for r in rows]
    return "\n".join(lines) + ("\n\nInner problem: MLP 64-32-10 (ReLU) on 8x8 digits, batch 32; inner steps per "
                               "second over a truncation of the steps shown, medians.")


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
    parser.add_argument("--out", type=Path, default=Path("results/meta_throughput"))
    args = parser.parse_args(argv)
    if args.quick:
        args.instances, args.modes, args.steps, args.repeats, args.no_compile = [1, 8], ["forward"], 3, 1, True
    torch.set_num_threads(args.threads)
    print(command_line())
    rows = []
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
