"""Compare update rules on held-out tasks of a meta-training config's own families: the validation
set on which a recipe's rule is selected (a meta-trained rule against its initialisation, or one
checkpoint against another), never the evaluation tasks of ``benchmarks/l2o_quality.py``.

Tasks are :func:`l2o.meta.validation.validation_tasks` (the ones a run with ``validation.every``
selects its ``rule_best`` on): the config's mixture of families without its reparameterization
augmentation, at seeds ``VALIDATION_SEED + k``, new instances of the training distribution.
Every rule trains every task for ``--steps`` steps at ``lr=1`` on the task's traced graph; the
report gives each task's final training loss (mean of the last ``SMOOTH`` steps) and, per rule, the
geometric mean over tasks of its ratio to the first rule's and the number of tasks it wins.

    python -m benchmarks.rule_validation --config l2o/meta/configs/adaptive_neural_graph.yaml \\
        --rules neural-graph-adaptive runs/adaptive/rule
"""

from __future__ import annotations

import argparse
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_results
from l2o.meta.validation import VALIDATION_SEED, geomean_ratio, validation_tasks

SMOOTH = 50


def run(config_path: str, index: int, rule: str, steps: int) -> dict[str, Any]:
    """Train validation task ``index`` of the config's mixture with ``rule``; its final loss."""
    from l2o import NeuralGraphOpt
    from l2o.meta.config import load_config

    torch.set_num_threads(1)
    [task] = validation_tasks(load_config(config_path), 1, start=index)
    params = dict(task.model.named_parameters())
    opt = NeuralGraphOpt(task.model.parameters(), rule=rule, model=task.model, example_inputs=task.example_inputs())
    losses = []
    for step in range(steps):
        loss = task.loss(params, task.batch(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item() if math.isfinite(loss.item()) else math.inf)
    return {"index": index, "task": task.name, "rule": rule, "final": sum(losses[-SMOOTH:]) / SMOOTH}


def summarize(runs: list[dict[str, Any]], rules: list[str]) -> tuple[dict[str, dict[str, float]], str]:
    """Per rule: geometric mean of its final loss over the first rule's, and tasks it wins against
    it (lower final loss); the markdown table of every task."""
    final = {(r["index"], r["rule"]): r["final"] for r in runs}
    indices = sorted({r["index"] for r in runs})
    names = {r["index"]: r["task"] for r in runs}
    summary = {}
    for rule in rules:
        losses, reference = [final[i, rule] for i in indices], [final[i, rules[0]] for i in indices]
        summary[rule] = {"geomean_ratio": geomean_ratio(losses, reference),
                         "wins": sum(a < b for a, b in zip(losses, reference))}
    lines = ["| task | " + " | ".join(f"`{r}`" for r in rules) + " |", "|---|" + "---:|" * len(rules)]
    lines += [f"| {names[i]} | " + " | ".join(f"{final[i, r]:.4g}" for r in rules) + " |" for i in indices]
    lines += ["", "| rule | geometric-mean ratio to the first | tasks won against the first |", "|---|---:|---:|"]
    lines += [f"| `{r}` | {s['geomean_ratio']:.3f} | {s['wins']} / {len(indices)} |" for r, s in summary.items()]
    return summary, "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="meta-training YAML whose families to draw from")
    parser.add_argument("--rules", nargs="+", required=True, help="rules to compare; ratios are to the first")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("results/rule_validation"))
    args = parser.parse_args(argv)
    if len(args.rules) < 2:
        parser.error("give at least two rules to compare")
    from tqdm.auto import tqdm

    jobs = [(str(args.config), i, rule, args.steps) for i in range(args.tasks) for rule in args.rules]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        runs = list(tqdm(pool.map(run, *zip(*jobs)), total=len(jobs), desc="validation runs"))
    summary, markdown = summarize(runs, args.rules)
    record = {"config": str(args.config), "rules": args.rules, "steps": args.steps, "runs": runs, "summary": summary}
    write_results(args.out, "rule_validation", record, markdown + f"\n\n{args.steps} steps at lr 1, tasks drawn "
                  f"from `{args.config}` at seeds {VALIDATION_SEED}+; final loss = mean of the last {SMOOTH} steps.")
    return record


if __name__ == "__main__":
    main()
