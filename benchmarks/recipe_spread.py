"""Does the documented recipe reproduce the shipped rule? Meta-train it with several seeds and evaluate
every resulting rule, and the shipped one, as untuned NeuralGraphOpt on the ``l2o_quality`` tasks.

Meta-training on a CPU is not bitwise reproducible (the same config on the same machine drifts by
about 1e-4 after the first meta-step), so a re-run of the recipe is one more draw from it, seeded or
not. This benchmark measures how far apart such draws end up, which is the noise that "reproduces the
shipped rule's quality" has to be judged against.

    python -m benchmarks.recipe_spread --runs runs/spread          # 3 soups of 3 runs: ~5 h on 2 cores
    python -m benchmarks.recipe_spread --seeds 3 --runs runs/spread_soup   # one independent soup: ~1.5 h
    python -m benchmarks.recipe_spread --quick                     # single runs of 2 meta-steps, 1 task, a minute

Each seed's run folder is ``<runs>/seed<k>``; finished or interrupted runs are resumed, not redone.
With a soup recipe (``members: K``) seed ``k`` trains members ``k ... k + K - 1``, so the default
seeds are ``0, K, 2K`` (independent soups).
The table lists each rule's mean final training loss (last 20-step window, mean over evaluation
seeds) per task, with Adam at lr 1e-3 as the bar, and per task the spread of the re-runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import l2o_quality
from benchmarks.common import write_results

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "l2o" / "meta" / "configs" / "shipped_neural_graph.yaml"
ADAM = "Adam(1e-3)"


def train(config: dict[str, Any], run_dir: Path) -> str:
    """Meta-train (or resume, or find finished) one seed's run; returns its rule folder."""
    import torch

    from l2o.meta import meta_train

    torch.set_num_threads(1)
    meta_train(config, run_dir)
    return str(run_dir / "rule")


def evaluate(rules: dict[str, str | None], tasks: list[str], seeds: list[int], steps: int,
             workers: int) -> list[dict[str, Any]]:
    """``l2o_quality.run`` of every rule (label -> rule folder, ``None``: the shipped default) and of
    Adam(1e-3) on every task and evaluation seed; each run record gains its ``label``."""
    from tqdm.auto import tqdm

    jobs = [(label, t, ("NeuralGraphOpt", 1.0), s, rule) for label, rule in rules.items() for t in tasks for s in seeds]
    jobs += [(ADAM, t, ("Adam", 1e-3), s, None) for t in tasks for s in seeds]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(l2o_quality.run, t, spec, s, steps, None, rule) for _, t, spec, s, rule in jobs]
        runs = [f.result() for f in tqdm(futures, desc="evaluation runs")]
    return [{**run, "label": label} for (label, *_), run in zip(jobs, runs)]


def summarize(runs: list[dict[str, Any]], shipped: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Per (rule, task) the mean final training and test loss over evaluation seeds; per task the
    re-runs' median, min and max and the shipped rule's final loss over that median."""
    labels = list(dict.fromkeys(r["label"] for r in runs))
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    def mean_final(label: str, task: str, curve: str) -> float:
        return statistics.fmean(r[curve][-1] for r in runs if r["label"] == label and r["task"] == task)

    final = {(label, task): mean_final(label, task, "train") for label in labels for task in tasks}
    rows = []
    for label in labels:
        row = {"rule": label}
        for task in tasks:
            row[task] = final[label, task]
            row[f"{task} test"] = mean_final(label, task, "test")
        if label != ADAM:
            row["beats Adam(1e-3)"] = sum(final[label, t] < final[ADAM, t] for t in tasks)
        rows.append(row)
    reruns = [label for label in labels if label not in (shipped, ADAM)]
    spread = {}
    for task in tasks:
        values = [final[label, task] for label in reruns]
        median = statistics.median(values)
        spread[task] = {"median": median, "min": min(values), "max": max(values),
                        "shipped_over_median": final[shipped, task] / median}
    return rows, spread


def table(rows: list[dict[str, Any]], spread: dict[str, dict[str, float]]) -> str:
    tasks = list(spread)
    lines = ["| rule | " + " | ".join(tasks) + " | tasks where it beats Adam(1e-3) |",
             "|---|" + "---:|" * (len(tasks) + 1)]
    for row in rows:
        cells = [f"{row[t]:.4g} (test {row[f'{t} test']:.3g})" for t in tasks]
        lines.append(f"| {row['rule']} | " + " | ".join(cells) + f" | {row.get('beats Adam(1e-3)', '')} |")
    lines += ["", "| task | re-runs: median | min | max | shipped / median |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {t} | {s['median']:.4g} | {s['min']:.4g} | {s['max']:.4g} | {s['shipped_over_median']:.2f} |"
              for t, s in spread.items()]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        labels = [r["rule"] for r in rows]
        ax.bar(range(len(rows)), [r[task] for r in rows],
               color=["tab:gray" if label == ADAM else "tab:blue" for label in labels])
        ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
        ax.set(title=task, ylabel="final training loss", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the recipe (default: the shipped one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="recipe seeds (default: 0 K 2K for a recipe of K members)")
    parser.add_argument("--runs", type=Path, default=Path("runs/spread"), help="folder of the seeds' run folders")
    parser.add_argument("--eval-seeds", type=int, default=None, help="evaluation seeds per task (default: 3)")
    parser.add_argument("--steps", type=int, default=None, help="inner steps per evaluation run (default: 1000)")
    parser.add_argument("--quick", action="store_true",
                        help="single runs (no soup) of 2 meta-steps, seeds 0 1; one task, 1 seed, 40 steps")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("results/recipe_spread"))
    args = parser.parse_args(argv)
    from l2o.meta.config import load_config

    recipe = load_config(args.config).to_dict()
    if args.quick:  # single runs of 2 meta-steps
        recipe.update(members=1, steps=2)
    members = recipe["members"]
    seeds = args.seeds or [k * members for k in range(2 if args.quick else 3)]
    tasks = ["cnn-digits"] if args.quick else list(l2o_quality.TASKS)
    eval_seeds = list(range(args.eval_seeds or (1 if args.quick else 3)))
    steps = args.steps or (40 if args.quick else 1000)

    configs = [{**recipe, "seed": seed} for seed in seeds]
    run_dirs = [args.runs / f"seed{seed}" for seed in seeds]
    spawn = multiprocessing.get_context("spawn")  # fresh workers: forking a process with threads can deadlock
    with ProcessPoolExecutor(max_workers=min(args.workers, len(seeds)), mp_context=spawn) as pool:
        rule_dirs = list(pool.map(train, configs, run_dirs))
    shipped = "shipped"
    label = (lambda s: f"seed {s}") if members == 1 else (lambda s: f"soup of seeds {s}-{s + members - 1}")
    rules: dict[str, str | None] = {shipped: None, **{label(s): d for s, d in zip(seeds, rule_dirs)}}
    runs = evaluate(rules, tasks, eval_seeds, steps, args.workers)
    rows, spread = summarize(runs, shipped)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, tasks, args.out / "recipe_spread.png")
    from l2o.optim import DEFAULT_RULE

    markdown = (table(rows, spread)
                + f"\n\nRecipe `{args.config.name}` with seeds {seeds} ({'single runs of 2 meta-steps, ' * args.quick}"
                f"run folders `{args.runs}/seed<k>`), the shipped rule `{DEFAULT_RULE}`, and Adam at lr 1e-3; each "
                f"evaluated untuned on {len(eval_seeds)} seed(s) x {steps} steps. Cells: final training loss "
                f"(mean of the last {l2o_quality.SMOOTH}-step window over evaluation seeds) and final test loss.")
    record = {"quick": args.quick, "config": str(args.config), "seeds": seeds, "eval_seeds": eval_seeds,
              "steps": steps, "rows": rows, "spread": spread, "runs": runs}
    write_results(args.out, "recipe_spread", record, markdown)
    return record


if __name__ == "__main__":
    main()
