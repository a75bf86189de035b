"""Learned-optimizer quality on tasks outside the meta-training distribution.

Tasks (none of them seen in meta-training, see l2o/meta/configs/shipped_neural_graph.yaml):

* ``mlp-wide-deep``: MLP 784-256-256-256-10 on 28x28 MNIST-5k (wider and deeper than any seen);
* ``cnn-mnist``: CNN 3 x 32 channels on 28x28 MNIST-5k;
* ``cnn-digits``: CNN 2 x 32 channels (gelu) on the 8x8 digits;
* ``transformer``: a 2-layer transformer (d 32, 4 heads) predicting a random order-2 Markov chain over 16
  tokens (meta-training saw only order-1 chains; an order-1 chain is learned to its entropy by every
  optimizer within about 200 steps, so it could not tell optimizers apart).

Optimizers: NeuralGraphOpt with its default (shipped) rule, untuned (``lr=1``), on the model's
traced graph (and, with ``--graph-ablation``, on the graph chained from parameter shapes); the FF baseline
rule shipped with it (``--ff-rule``); Adam at lr 1e-3; and Adam with the learning rate tuned on a
7-point log grid (1e-4 ... 1e-1, best final training loss on the first seed, then run on all seeds). For every task it
reports final training and test losses, the speedup of NeuralGraphOpt over tuned Adam (steps tuned
Adam needs to reach NeuralGraphOpt's final training loss / steps run, and the reverse) and plots the
curves.

    python -m benchmarks.l2o_quality              # 4 tasks x 3 seeds x 1000 steps (~30 min on 2 cores)
    python -m benchmarks.l2o_quality --quick      # 2 tasks, 1 seed, 150 steps
    python -m benchmarks.l2o_quality --rule runs/my-run/rule   # your meta-trained rule as NeuralGraphOpt
"""

from __future__ import annotations

import argparse
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_results
from l2o.optim import BASELINE_RULE

CHAINED = "NeuralGraphOpt chained graph"

TASKS = ("mlp-wide-deep", "cnn-mnist", "cnn-digits", "transformer")
ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SMOOTH = 20  # training loss is averaged over windows of this many steps


def make_task(name: str, seed: int):
    """The evaluation task ``name`` (architecture fixed; initial weights and data order by ``seed``)."""
    from l2o.meta.tasks.image import CNNFamily, MLPFamily
    from l2o.meta.tasks.sequence import TransformerFamily

    families = {
        "mlp-wide-deep": lambda: MLPFamily(widths=[256], depths=[3], activations=["relu"], dataset="mnist5k",
                                           batch_size=128),
        "cnn-mnist": lambda: CNNFamily(channels=[32], depths=[3], kernel_sizes=[3], activations=["relu"],
                                       dataset="mnist5k", batch_size=64),
        "cnn-digits": lambda: CNNFamily(channels=[32], depths=[2], kernel_sizes=[3], activations=["gelu"],
                                        dataset="digits", batch_size=64),
        "transformer": lambda: TransformerFamily(vocab_sizes=[16], d_models=[32], heads=[4], depths=[2],
                                                 ff_mults=[4], activations=["gelu"], batch_size=32, orders=[2]),
    }
    if name not in families:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(families)}")
    return families[name]().sample(seed)


def make_optimizer(spec: tuple[str, float], model: torch.nn.Module, ff_rule: str | None,
                   rule: str | None = None, example_inputs: tuple | None = None) -> torch.optim.Optimizer:
    """``spec = (kind, lr)``; ``rule``: NeuralGraphOpt's rule (``None``: the shipped default).
    ``"NeuralGraphOpt"`` runs the default ``compile="auto"`` (the fused step where it compiles) on
    the model's traced graph; ``"NeuralGraphOpt reference"`` the reference step (``compile=False``);
    ``"NeuralGraphOpt chained graph"`` the default step on the graph chained from parameter shapes
    (no ``model``), which is what the optimizer falls back to when it cannot trace a model."""
    from l2o import NeuralGraphOpt

    kind, lr = spec
    if kind == "Adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if kind in ("NeuralGraphOpt", "NeuralGraphOpt reference"):
        compile = "auto" if kind == "NeuralGraphOpt" else False
        return NeuralGraphOpt(model.parameters(), lr=lr, model=model, rule=rule, compile=compile,
                              example_inputs=example_inputs)
    if kind == CHAINED:
        return NeuralGraphOpt(model.parameters(), lr=lr, rule=rule)
    if kind == "FF":
        return NeuralGraphOpt(model.parameters(), lr=lr, rule=ff_rule or "ff")
    raise ValueError(kind)


def run(task_name: str, spec: tuple[str, float], seed: int, steps: int, ff_rule: str | None,
        rule: str | None = None) -> dict[str, Any]:
    """Train one (task, optimizer, seed); returns smoothed training curve and test losses."""
    torch.set_num_threads(1)
    task = make_task(task_name, seed)
    model = task.model
    params = dict(model.named_parameters())
    opt = make_optimizer(spec, model, ff_rule, rule, task.example_inputs())
    train, window, test = [], [], []
    test_every = max(steps // 10, 1)
    for step in range(steps):
        loss = task.loss(params, task.batch(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        value = loss.item()
        window.append(value if math.isfinite(value) else float("inf"))
        if len(window) == SMOOTH:
            train.append(sum(window) / SMOOTH)
            window = []
        if (step + 1) % test_every == 0:
            with torch.no_grad():
                losses = [task.loss(params, task.batch(k, "test")).item() for k in range(4)]
            test.append(sum(losses) / len(losses))
    return {"task": task_name, "optimizer": spec[0], "lr": spec[1], "seed": seed, "train": train, "test": test}


def steps_to_reach(curve: list[float], target: float) -> float:
    """First step (window end) at which a smoothed curve is <= ``target``; ``inf`` if never."""
    for i, value in enumerate(curve):
        if value <= target:
            return (i + 1) * SMOOTH
    return math.inf


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _mean_curve(group: list[dict[str, Any]]) -> list[float]:
    return [_mean(list(v)) for v in zip(*[r["train"] for r in group])]


def groups_of(runs: list[dict[str, Any]], task: str) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """The compared groups of runs of ``task`` (label -> runs over seeds) and the tuned Adam lr (the
    grid point with the lowest final training loss on the first seed)."""
    of = [r for r in runs if r["task"] == task]
    adam = {}
    for r in of:
        if r["optimizer"] == "Adam":
            adam.setdefault(r["lr"], []).append(r)
    tuning_seed = min(r["seed"] for r in of)
    best = min(adam, key=lambda lr: next(r["train"][-1] for r in adam[lr] if r["seed"] == tuning_seed))
    groups = {
        "NeuralGraphOpt": [r for r in of if r["optimizer"] == "NeuralGraphOpt"],
        CHAINED: [r for r in of if r["optimizer"] == CHAINED],
        "FF": [r for r in of if r["optimizer"] == "FF"],
        "Adam(1e-3)": adam.get(1e-3, []),
        f"Adam tuned ({best:g})": adam[best],
    }
    return {k: v for k, v in groups.items() if v}, best


def summarize(runs: list[dict[str, Any]], tasks: list[str], steps: int) -> tuple[list[dict], dict, dict]:
    """Per (task, optimizer) final losses and step counts; per task the tuned lr and NeuralGraphOpt's
    speedup over tuned Adam: ``steps / (steps NeuralGraphOpt needs to reach tuned Adam's final loss)``
    when it gets there, else ``(steps tuned Adam needs to reach NeuralGraphOpt's final loss) / steps``
    (below 1: tuned Adam is faster)."""
    rows, best_lr, speedup = [], {}, {}
    for task in tasks:
        groups, best_lr[task] = groups_of(runs, task)
        tuned = _mean_curve(groups[f"Adam tuned ({best_lr[task]:g})"])
        ours = _mean_curve(groups["NeuralGraphOpt"])
        ours_to_tuned, tuned_to_ours = steps_to_reach(ours, tuned[-1]), steps_to_reach(tuned, ours[-1])
        speedup[task] = steps / ours_to_tuned if ours_to_tuned < math.inf else tuned_to_ours / steps
        for name, group in groups.items():
            final = [r["train"][-1] for r in group]
            curve = _mean_curve(group)
            rows.append({
                "task": task, "optimizer": name, "final_train": _mean(final),
                "final_train_std": _mean([(f - _mean(final)) ** 2 for f in final]) ** 0.5,
                "final_test": _mean([r["test"][-1] for r in group]), "vs_tuned_adam": curve[-1] / tuned[-1],
                "steps_to_tuned_adam_final": steps_to_reach(curve, tuned[-1]),
                "tuned_adam_steps_to_this_final": steps_to_reach(tuned, curve[-1]),
            })
    return rows, best_lr, speedup


def plot(runs: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for label, group in groups_of(runs, task)[0].items():
            curve = _mean_curve(group)
            ax.plot([(i + 1) * SMOOTH for i in range(len(curve))], curve, label=label)
        ax.set(title=task, xlabel="step", ylabel="training loss", yscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: list[dict[str, Any]], speedup: dict[str, float]) -> str:
    fmt = lambda s: "never" if s == math.inf else f"{s:.0f}"  # noqa: E731
    lines = ["| task | optimizer | final train loss | final test loss | / tuned Adam | steps to reach tuned "
             "Adam's final | tuned Adam's steps to reach this final |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['optimizer']} | {r['final_train']:.4f} ± {r['final_train_std']:.4f} | "
                     f"{r['final_test']:.4f} | {r['vs_tuned_adam']:.2f} | {fmt(r['steps_to_tuned_adam_final'])} | "
                     f"{fmt(r['tuned_adam_steps_to_this_final'])} |")
    speed = ["", "| task | NeuralGraphOpt speedup vs tuned Adam |", "|---|---:|"]
    speed += [f"| {task} | {s:.2f}x |" for task, s in speedup.items()]
    return "\n".join(lines + speed)


def report(record: dict[str, Any], out: Path, ff_rule: str | None) -> None:
    """Summary table, plot and JSON of a finished set of runs (``record["runs"]``; ``record["rule"]``:
    NeuralGraphOpt's rule when it was not the default)."""
    from l2o.optim import DEFAULT_RULE

    rule = record.get("rule") or DEFAULT_RULE
    tasks, steps = list(dict.fromkeys(r["task"] for r in record["runs"])), record["steps"]
    rows, best_lr, speedup = summarize(record["runs"], tasks, steps)
    out.mkdir(parents=True, exist_ok=True)
    plot(record["runs"], tasks, out / "l2o_quality.png")
    markdown = (table(rows, speedup)
                + f"\n\nNeuralGraphOpt rule: `{rule}`, FF rule: `{ff_rule or 'ff (untrained)'}`; "
                f"{steps} steps, seeds {record['seeds']}, Adam grid {record['grid']}. Losses are means over seeds "
                f"of the last {SMOOTH}-step window; curves in `l2o_quality.png`. Speedup: steps / (steps "
                "NeuralGraphOpt needs to reach tuned Adam's final loss), or, when it does not get there, "
                "(steps tuned Adam needs to reach NeuralGraphOpt's final loss) / steps.")
    record = {**record, "rows": rows, "best_lr": best_lr, "speedup_vs_tuned_adam": speedup}
    write_results(out, "l2o_quality", record, markdown)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--rule", default=None,
                        help="NeuralGraphOpt's rule: a rule folder (e.g. a meta-training run's rule/) or a "
                             "shipped/Hub name (default: the shipped default rule)")
    parser.add_argument("--ff-rule", default=None, help="FF rule to compare (default: the shipped baseline, else 'ff')")
    parser.add_argument("--graph-ablation", action="store_true",
                        help=f"also run '{CHAINED}' (the graph from parameter shapes instead of the traced one)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=None, help="a subset of the tasks")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("results/l2o_quality"))
    parser.add_argument("--summarize", type=Path, default=None,
                        help="only rebuild the table and plot from the runs in this l2o_quality.json")
    args = parser.parse_args(argv)
    if args.summarize is not None:
        record = json.loads(args.summarize.read_text())
        keep = ("command", "machine", "quick", "steps", "seeds", "grid", "runs", "rule")
        if args.rule is not None:
            record["rule"] = args.rule
        report({k: record[k] for k in keep if k in record}, args.out, args.ff_rule or _shipped(BASELINE_RULE))
        return record
    tasks = args.tasks or (["cnn-digits", "mlp-wide-deep"] if args.quick else list(TASKS))
    steps = args.steps or (150 if args.quick else 1000)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    grid = (1e-3, 3e-3, 1e-2) if args.quick else ADAM_GRID
    ff_rule = args.ff_rule or _shipped(BASELINE_RULE)
    learned = [("NeuralGraphOpt", 1.0), ("FF", 1.0), *([(CHAINED, 1.0)] if args.graph_ablation else [])]
    # phase 1: the learned optimizers on every seed, the Adam grid on the first seed (the tuning run);
    # phase 2: Adam at 1e-3 and at the tuned lr on the other seeds
    phase1 = [(t, s, seed, steps, ff_rule, args.rule) for t in tasks for s in learned for seed in seeds]
    phase1 += [(t, ("Adam", lr), seeds[0], steps, ff_rule, args.rule) for t in tasks for lr in grid]

    from tqdm.auto import tqdm

    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        runs = list(tqdm(pool.map(run, *zip(*phase1)), total=len(phase1), desc="training runs (1/2)"))
        tuned = {t: groups_of(runs, t)[1] for t in tasks}
        phase2 = [(t, ("Adam", lr), seed, steps, ff_rule, args.rule) for t in tasks
                  for lr in sorted({1e-3, tuned[t]}) for seed in seeds[1:]]
        if phase2:
            runs += list(tqdm(pool.map(run, *zip(*phase2)), total=len(phase2), desc="training runs (2/2)"))
    record = {"quick": args.quick, "steps": steps, "seeds": seeds, "grid": list(grid), "runs": runs}
    if args.rule is not None:
        record["rule"] = args.rule
    report(record, args.out, ff_rule)
    return record


def _shipped(name: str) -> str | None:
    from l2o.hub import PRETRAINED_DIR

    return name if (PRETRAINED_DIR / name).is_dir() else None


if __name__ == "__main__":
    main()
