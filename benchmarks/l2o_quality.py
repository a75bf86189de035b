"""Learned-optimizer quality against tuned baselines on eight tasks, most of them outside meta-training.

Tasks (``TASK_SPECS``; the shipped rule was meta-trained on MLPs of 1-2 hidden layers of 32-128
units without normalization and CNNs of 1-2 conv layers of 8-16 channels on MNIST-5k and digits,
see l2o/meta/configs/shipped_neural_graph.yaml):

* ``mlp-wide-deep``: MLP 784-256-256-256-10 (relu) on 28x28 MNIST-5k (wider and deeper than any seen);
* ``cnn-mnist``: CNN 3 x 32 channels on 28x28 MNIST-5k;
* ``cnn-digits``: CNN 2 x 32 channels (gelu) on the 8x8 digits;
* ``transformer``: a 2-layer transformer (d 32, 4 heads) predicting a random order-2 Markov chain over 16
  tokens (meta-training saw only order-1 chains; an order-1 chain is learned to its entropy by every
  optimizer within about 200 steps, so it could not tell optimizers apart);
* ``autoencoder``: MLP autoencoder 196-128-32-128-196 (gelu, sigmoid output) on 14x14 MNIST-5k,
  mean squared reconstruction error;
* ``regression``: tanh MLP 16-64-64-1 fitting a fixed random tanh teacher (16-64-64-1, gain 2) of
  Gaussian inputs with noise 0.1 (4096 train / 1024 test points), mean squared error. Synthetic rather
  than an offline real set (scikit-learn's diabetes: 442 points) so that its size and noise floor
  (test loss 0.01) are chosen: optimizers differ on it (over 1000 steps, best of 4 lrs, final train
  loss: Adam 0.037, SGD 0.105; Adam still improving) and fitting it faster overfits the noise (Adam's
  test loss is lowest, 0.12, at lr 3e-3-1e-2, not at its best-training lr 3e-2: 0.16);
* ``mlp-layernorm``: MLP 784-128-128-10 with LayerNorm and gelu on 28x28 MNIST-5k (shapes seen in
  meta-training, the normalization not);
* ``resnet-cnn``: residual CNN on 14x14 MNIST-5k: 3x3 stem conv to 16 channels, 2 residual blocks
  (conv-BN-relu-conv-BN + skip, BatchNorm on batch statistics), global average pooling, linear.

Optimizers (``--optimizers`` picks kinds; Adam always runs, being the reference of every ratio):

* ``Adam``, ``AdamW`` (weight decay 0.01) and ``Muon``, each tuned on the 7-point log grid
  ``ADAM_GRID`` (1e-4 ... 1e-1) by the final smoothed training loss on the first seed, then run at
  the best lr on all seeds; and ``Adam(1e-3)`` untuned on all seeds.
* ``Muon``: ``torch.optim.Muon`` with ``adjust_lr_fn="match_rms_adamw"`` (its lr on AdamW's scale) on
  the 2-D weight matrices of the hidden layers, AdamW (same lr, both weight decay 0.01) on every other
  parameter: biases, norms, 4-D conv kernels, embeddings, the learned position table, and the input
  and output (classifier) layers, as torch's Muon documentation recommends ("Muon is an optimizer for
  2D parameters of neural network hidden layers. Other parameters, such as bias, and embedding, should
  be optimized by a standard method such as AdamW") and Keller Jordan's write-up spells out for the
  input and output layers. So on the CNN tasks, whose only matrix is the classifier, ``Muon`` is AdamW.
* ``NeuralGraphOpt`` with its default (shipped) rule or ``--rule``, untuned (``lr=1``) on all seeds,
  and tuned on ``LEARNED_GRID`` (0.3, 1, 3) like the baselines; with ``--graph-ablation`` also on the
  graph chained from parameter shapes instead of the traced one; ``FF``, the FF baseline rule shipped
  with it (``--ff-rule``), at ``lr=1``.

Report: per (task, optimizer) final training loss (mean ± std over seeds of the last 20-step
window), final test loss, both as ratios to tuned Adam's, and the steps the seed-mean curve takes
to reach tuned Adam's final training loss. Losses differ in scale across tasks, so the summary over
tasks is per optimizer: the geometric mean of those ratios, the number of tasks with final training
loss <= tuned Adam's and with test loss at most 5 % above it, and, for untuned NeuralGraphOpt, the
number of tasks on which its final training loss is below the FF rule's and tuned Muon's. A
diverged run counts as an infinite loss (its geometric mean is then ``inf``).

Cost. Baseline runs (Adam, AdamW, Muon) do not depend on the learned rule: they are cached as one
JSON file per (task, optimizer, lr, seed, steps) in ``--cache`` (default ``<out>/runs_cache``), keyed
also by a fingerprint of the task's definition, so evaluating a new rule reruns only the learned
optimizers. Delete the cache after changing a baseline's code. A full default run is about 38 runs
of 1000 steps per task: 21 baseline grid runs and 2 NeuralGraphOpt grid runs on seed 0, then on the
3 seeds untuned NeuralGraphOpt, FF and Adam(1e-3), and each tuned lr on the other 2 seeds; 29 of
them are cached baselines. Seconds per 100 steps, one thread, measured on the 2-core CPU machine
(mlp-wide-deep, cnn-mnist, cnn-digits, transformer, autoencoder, regression, mlp-layernorm,
resnet-cnn): Adam 0.67, 2.7, 0.41, 1.05, 0.26, 0.09, 0.29, 2.0 (Muon up to 2x Adam on the MLPs and
the transformer, AdamW as Adam); NeuralGraphOpt 2.3, 3.7, 0.41, 3.6, 1.5, 0.24, 0.77, 3.9, plus
5-10 s per run to set up and 10-120 s per worker process and task to compile its fused step; FF 13,
4.5, 1.05, 3.5, 2.0, 0.6, 6.1, 4.1. That is about 40 CPU minutes of baselines and 55 of learned
optimizers: about 50 minutes on 2 workers with an empty cache, about 30 with a filled one (a new rule).

    python -m benchmarks.l2o_quality              # 8 tasks x 3 seeds x 1000 steps (see Cost above)
    python -m benchmarks.l2o_quality --quick      # 2 tasks, 1 seed, 150 steps, 3-point grids
    python -m benchmarks.l2o_quality --rule runs/my-run/rule   # your meta-trained rule as NeuralGraphOpt
    python -m benchmarks.l2o_quality --optimizers NeuralGraphOpt --tasks regression autoencoder
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import write_results
from l2o.optim import BASELINE_RULE

CHAINED = "NeuralGraphOpt chained graph"

TASK_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    # name -> (family in l2o.meta.tasks.FAMILIES, its options): the meta-training YAML's form
    "mlp-wide-deep": ("mlp", {"widths": [256], "depths": [3], "activations": ["relu"], "dataset": "mnist5k",
                              "batch_size": 128}),
    "cnn-mnist": ("cnn", {"channels": [32], "depths": [3], "kernel_sizes": [3], "activations": ["relu"],
                          "dataset": "mnist5k", "batch_size": 64}),
    "cnn-digits": ("cnn", {"channels": [32], "depths": [2], "kernel_sizes": [3], "activations": ["gelu"],
                           "dataset": "digits", "batch_size": 64}),
    "transformer": ("transformer", {"vocab_sizes": [16], "d_models": [32], "heads": [4], "depths": [2],
                                    "ff_mults": [4], "activations": ["gelu"], "batch_size": 32, "orders": [2]}),
    "autoencoder": ("autoencoder", {"dataset": "mnist5k", "image_size": 14, "widths": [128], "depths": [1],
                                    "bottlenecks": [32], "activations": ["gelu"], "output": "sigmoid",
                                    "batch_size": 128}),
    "regression": ("regression", {"inputs": 16, "widths": [64], "depths": [2], "activations": ["tanh"],
                                  "teacher_width": 64, "teacher_depth": 2, "teacher_gain": 2.0, "noise": 0.1,
                                  "train_size": 4096, "test_size": 1024, "batch_size": 128}),
    "mlp-layernorm": ("mlp", {"widths": [128], "depths": [2], "activations": ["gelu"], "norms": ["layer"],
                              "dataset": "mnist5k", "batch_size": 128}),
    "resnet-cnn": ("resnet", {"channels": [16], "blocks": [2], "activations": ["relu"], "norms": ["batch"],
                              "dataset": "mnist5k", "image_size": 14, "batch_size": 64}),
}
TASKS = tuple(TASK_SPECS)

KINDS = ("NeuralGraphOpt", "FF", "Adam", "AdamW", "Muon")  # what --optimizers chooses from
BASELINES = ("Adam", "AdamW", "Muon")  # independent of the learned rule, so cached
ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
QUICK_GRID = (1e-3, 3e-3, 1e-2)
LEARNED_GRID = (0.3, 1.0, 3.0)
WEIGHT_DECAY = 0.01  # AdamW's and Muon's (torch's AdamW default)
SMOOTH = 20  # training loss is averaged over windows of this many steps
TEST_BATCHES = 4  # test loss: mean over this many test batches, 10 times per run

# compared groups: fixed learning rate on every seed, or tuned on the first seed (label -> kind)
FIXED = {"NeuralGraphOpt": ("NeuralGraphOpt", 1.0), CHAINED: (CHAINED, 1.0), "FF": ("FF", 1.0),
         "Adam(1e-3)": ("Adam", 1e-3)}
TUNED = {"NeuralGraphOpt tuned": "NeuralGraphOpt", "Adam tuned": "Adam", "AdamW tuned": "AdamW",
         "Muon tuned": "Muon"}
LABELS = ("NeuralGraphOpt", "NeuralGraphOpt tuned", CHAINED, "FF", "Adam(1e-3)", "Adam tuned", "AdamW tuned",
          "Muon tuned")
REFERENCE = "Adam tuned"

Job = tuple[str, tuple[str, float], int]  # (task, (optimizer kind, lr), seed)


def make_task(name: str, seed: int):
    """The evaluation task ``name`` (architecture fixed; initial weights and data order by ``seed``)."""
    from l2o.meta.tasks import FAMILIES

    if name not in TASK_SPECS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASK_SPECS)}")
    family, options = TASK_SPECS[name]
    return FAMILIES[family](**options).sample(seed)


def hidden_matrices(model: nn.Module) -> list[str]:
    """Names of the parameters Muon trains: the 2-D weights of hidden layers.

    A layer is a submodule that owns parameters, in registration order (the order of use in every
    task here); the first (input) and last (output) layers, embeddings and parameters owned by the
    model itself (e.g. a learned position table) are left out.
    """
    layers = [(name, m) for name, m in model.named_modules()
              if m is not model and next(m.parameters(recurse=False), None) is not None]
    return [f"{name}.{key}" for name, m in layers[1:-1] if not isinstance(m, nn.Embedding)
            for key, p in m.named_parameters(recurse=False) if p.ndim == 2]


class MuonAdamW:
    """Muon on the hidden layers' weight matrices (:func:`hidden_matrices`), AdamW on every other
    parameter, at one ``lr`` (Muon's scaled by ``match_rms_adamw`` to AdamW's update size) and
    weight decay ``WEIGHT_DECAY``, the split torch's Muon documentation recommends (Muon is meant for
    hidden layers' 2-D weights only). Steps and zeroes both: all the training loop needs.
    ``muon`` is ``None`` for a model without hidden matrices (then this is AdamW)."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        hidden = set(hidden_matrices(model))
        named = list(model.named_parameters())
        matrices = [p for n, p in named if n in hidden]
        others = [p for n, p in named if n not in hidden]
        self.muon = (torch.optim.Muon(matrices, lr=lr, weight_decay=WEIGHT_DECAY, adjust_lr_fn="match_rms_adamw")
                     if matrices else None)
        self.adamw = torch.optim.AdamW(others, lr=lr, weight_decay=WEIGHT_DECAY) if others else None

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [opt for opt in (self.muon, self.adamw) if opt is not None]

    def zero_grad(self) -> None:
        for opt in self._optimizers():
            opt.zero_grad()

    def step(self) -> None:
        for opt in self._optimizers():
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        """``{"state": [Muon's state, AdamW's state]}``: what a memory count reads."""
        return {"state": [opt.state_dict()["state"] for opt in self._optimizers()]}


def make_optimizer(spec: tuple[str, float], model: torch.nn.Module, ff_rule: str | None,
                   rule: str | None = None, example_inputs: tuple | None = None) -> torch.optim.Optimizer | MuonAdamW:
    """``spec = (kind, lr)``; ``rule``: NeuralGraphOpt's rule (``None``: the shipped default).
    ``"Adam"``, ``"AdamW"`` and ``"Muon"`` (:class:`MuonAdamW`) are the baselines. ``"NeuralGraphOpt"``
    runs the default ``compile="auto"`` (the fused step where it compiles) on the model's traced graph;
    ``"NeuralGraphOpt reference"`` the reference step (``compile=False``); ``"NeuralGraphOpt chained
    graph"`` the default step on the graph chained from parameter shapes (no ``model``), which is what
    the optimizer falls back to when it cannot trace a model."""
    from l2o import NeuralGraphOpt

    kind, lr = spec
    if kind == "Adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if kind == "AdamW":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    if kind == "Muon":
        return MuonAdamW(model, lr)
    if kind in ("NeuralGraphOpt", "NeuralGraphOpt reference"):
        compile = "auto" if kind == "NeuralGraphOpt" else False
        return NeuralGraphOpt(model.parameters(), lr=lr, model=model, rule=rule, compile=compile,
                              example_inputs=example_inputs)
    if kind == CHAINED:
        return NeuralGraphOpt(model.parameters(), lr=lr, rule=rule)
    if kind == "FF":
        return NeuralGraphOpt(model.parameters(), lr=lr, rule=ff_rule or "ff")
    raise ValueError(f"unknown optimizer {kind!r}; choose from {sorted({*KINDS, CHAINED, 'NeuralGraphOpt reference'})}")


def _finite(value: float) -> float:
    """``value``, or ``inf`` for a diverged (nan or infinite) loss."""
    return value if math.isfinite(value) else math.inf


def run(task_name: str, spec: tuple[str, float], seed: int, steps: int, ff_rule: str | None,
        rule: str | None = None) -> dict[str, Any]:
    """Train one (task, optimizer, seed); returns the smoothed training curve (``steps // SMOOTH``
    window means) and 10 test losses (each the mean over ``TEST_BATCHES`` test batches)."""
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
        window.append(_finite(loss.item()))
        if len(window) == SMOOTH:
            train.append(sum(window) / SMOOTH)
            window = []
        if (step + 1) % test_every == 0:
            with torch.no_grad():
                losses = [_finite(task.loss(params, task.batch(k, "test")).item()) for k in range(TEST_BATCHES)]
            test.append(sum(losses) / len(losses))
    return {"task": task_name, "optimizer": spec[0], "lr": spec[1], "seed": seed, "steps": steps, "train": train,
            "test": test}


# -- which runs: the job lists, the cache and the process pool --------------------------------------------------


def first_jobs(tasks: list[str], kinds: list[str], seeds: list[int], grid: tuple[float, ...],
               ablation: bool) -> list[Job]:
    """The runs that need no tuning result: every fixed-lr group on every seed, every tuned kind's
    grid (``grid`` for the baselines, ``LEARNED_GRID`` for NeuralGraphOpt) on the first seed."""
    fixed = [spec for label, spec in FIXED.items() if spec[0] in kinds or (label == CHAINED and ablation)]
    jobs = [(t, spec, seed) for t in tasks for spec in fixed for seed in seeds]
    for kind in dict.fromkeys(TUNED.values()):
        if kind in kinds:
            jobs += [(t, (kind, lr), seeds[0]) for t in tasks
                     for lr in (LEARNED_GRID if kind == "NeuralGraphOpt" else grid)]
    return list(dict.fromkeys(jobs))


def tuned_jobs(runs: list[dict[str, Any]], tasks: list[str], seeds: list[int]) -> list[Job]:
    """Every tuned group at its best lr (from ``runs``' first seed) on the other seeds."""
    jobs = []
    for task in tasks:
        for kind in TUNED.values():
            lr = tuned_lr(runs, task, kind)
            if lr is not None:
                jobs += [(task, (kind, lr), seed) for seed in seeds[1:]]
    return jobs


def fingerprint(task: str) -> str:
    """Short hash of what a cached run of ``task`` depends on besides (optimizer, lr, seed, steps)."""
    key = json.dumps([TASK_SPECS[task], SMOOTH, TEST_BATCHES, WEIGHT_DECAY], sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def cache_path(cache: Path, job: Job, steps: int) -> Path:
    task, (kind, lr), seed = job
    return cache / f"{task}_{kind}_lr{lr:g}_seed{seed}_{steps}steps_{fingerprint(task)}.json"


def fill_cache(results: Path, cache: Path) -> int:
    """Write the baseline runs recorded in a results file of this benchmark (``l2o_quality.json``)
    into ``cache``, as if they had just been trained: the cache of a committed result, rebuilt on a
    machine that does not have it. Returns how many were written. The task fingerprint in each file
    name still guards against a task whose definition has changed since."""
    record = json.loads(results.read_text())
    written = 0
    cache.mkdir(parents=True, exist_ok=True)
    for run in record["runs"]:
        if run["optimizer"] in BASELINES:
            job = (run["task"], (run["optimizer"], run["lr"]), run["seed"])
            cache_path(cache, job, run["steps"]).write_text(json.dumps(run))
            written += 1
    return written


def run_jobs(jobs: list[Job], steps: int, ff_rule: str | None, rule: str | None, workers: int,
             cache: Path | None, desc: str) -> dict[Job, dict[str, Any]]:
    """Run records of ``jobs``: baseline runs from ``cache`` where there, the rest trained (on
    ``workers`` processes; in this one for 1) and the baselines among them written to ``cache``."""
    done, todo = {}, []
    for job in jobs:
        path = cache_path(cache, job, steps) if cache is not None and job[1][0] in BASELINES else None
        if path is not None and path.exists():
            done[job] = json.loads(path.read_text())
        else:
            todo.append(job)
    if len(todo) < len(jobs):
        print(f"{desc}: {len(jobs) - len(todo)} baseline runs from the cache {cache}")
    for job, record in zip(todo, _execute(todo, steps, ff_rule, rule, workers, desc)):
        done[job] = record
        if cache is not None and job[1][0] in BASELINES:
            cache.mkdir(parents=True, exist_ok=True)
            cache_path(cache, job, steps).write_text(json.dumps(record))
    return {job: done[job] for job in jobs}


def _execute(jobs: list[Job], steps: int, ff_rule: str | None, rule: str | None, workers: int,
             desc: str) -> Iterator[dict[str, Any]]:
    """:func:`run` of every job, in order, with a progress bar."""
    from tqdm.auto import tqdm

    args = [(task, spec, seed, steps, ff_rule, rule) for task, spec, seed in jobs]
    if workers == 1 or len(jobs) <= 1:
        yield from tqdm((run(*a) for a in args), total=len(args), desc=desc)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from tqdm(pool.map(run, *zip(*args)), total=len(args), desc=desc)


# -- what the runs say: groups, ratios to tuned Adam, the summary over tasks --------------------------------------


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _std(xs: list[float]) -> float:
    """Population std; ``inf`` when a run diverged (its spread is not a number)."""
    if not all(map(math.isfinite, xs)):
        return math.inf
    return _mean([(x - _mean(xs)) ** 2 for x in xs]) ** 0.5


def _mean_curve(group: list[dict[str, Any]]) -> list[float]:
    return [_mean(list(v)) for v in zip(*[r["train"] for r in group])]


def steps_to_reach(curve: list[float], target: float) -> float:
    """First step (window end) at which a smoothed curve is <= ``target``; ``inf`` if never."""
    for i, value in enumerate(curve):
        if value <= target:
            return (i + 1) * SMOOTH
    return math.inf


def ratio(value: float, reference: float) -> float:
    """``value / reference`` with diverged runs as infinite losses: ``inf`` if ``value`` is not
    finite, 0 if only ``reference`` is."""
    if not math.isfinite(value):
        return math.inf
    return value / reference if math.isfinite(reference) else 0.0


def geometric_mean(xs: list[float]) -> float:
    """``exp(mean(log x))``; ``inf`` if any ``x`` is infinite, 0 if any is 0."""
    if any(x == math.inf for x in xs):
        return math.inf
    if any(x <= 0 for x in xs):
        return 0.0
    return math.exp(_mean([math.log(x) for x in xs]))


def tuned_lr(runs: list[dict[str, Any]], task: str, kind: str) -> float | None:
    """The lr of ``kind`` with the lowest final smoothed training loss on ``task``'s first seed
    (ties: the smaller lr); ``None`` unless a grid (two lrs or more) was run."""
    of = [r for r in runs if r["task"] == task]
    tuning_seed = min(r["seed"] for r in of)
    final = {r["lr"]: _finite(r["train"][-1]) for r in of if r["optimizer"] == kind and r["seed"] == tuning_seed}
    return min(final, key=lambda lr: (final[lr], lr)) if len(final) > 1 else None


def groups_of(runs: list[dict[str, Any]], task: str) -> dict[str, tuple[float, list[dict[str, Any]]]]:
    """The compared groups of runs of ``task``, in ``LABELS`` order: label -> (lr, its runs over seeds)."""
    of = [r for r in runs if r["task"] == task]
    specs = dict(FIXED)
    for label, kind in TUNED.items():
        lr = tuned_lr(runs, task, kind)
        if lr is not None:
            specs[label] = (kind, lr)
    groups = {label: (specs[label][1], [r for r in of if (r["optimizer"], r["lr"]) == specs[label]])
              for label in LABELS if label in specs}
    return {label: group for label, group in groups.items() if group[1]}


def task_rows(runs: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """One row per group of ``task``: final losses (mean and std over seeds), their ratios to tuned
    Adam's and the steps the group's seed-mean curve takes to reach tuned Adam's final training loss."""
    groups = groups_of(runs, task)
    if REFERENCE not in groups:
        raise ValueError(f"task {task!r} has no tuned Adam runs (an Adam grid on its first seed); every ratio is "
                         "to tuned Adam")
    reference = groups[REFERENCE][1]
    ref_train = _mean([r["train"][-1] for r in reference])
    ref_test = _mean([r["test"][-1] for r in reference])
    rows = []
    for label, (lr, group) in groups.items():
        train, test = [r["train"][-1] for r in group], [r["test"][-1] for r in group]
        rows.append({
            "task": task, "optimizer": label, "lr": lr, "seeds": len(group),
            "final_train": _mean(train), "final_train_std": _std(train),
            "final_test": _mean(test), "final_test_std": _std(test),
            "train_vs_tuned_adam": ratio(_mean(train), ref_train), "test_vs_tuned_adam": ratio(_mean(test), ref_test),
            "steps_to_tuned_adam_final": steps_to_reach(_mean_curve(group), ref_train),
        })
    return rows


def overall(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per optimizer over the tasks it ran: geometric means of its train and test ratios to tuned
    Adam, the tasks where its final train loss is <= tuned Adam's and where its test loss is at most
    5 % above; for untuned NeuralGraphOpt also the tasks where its final train loss is below FF's
    and below tuned Muon's (``None`` where those did not run)."""
    final = {(r["task"], r["optimizer"]): r["final_train"] for r in rows}
    summary = []
    for label in dict.fromkeys(r["optimizer"] for r in rows):
        mine = [r for r in rows if r["optimizer"] == label]
        entry = {
            "optimizer": label, "tasks": len(mine),
            "train_geomean": geometric_mean([r["train_vs_tuned_adam"] for r in mine]),
            "test_geomean": geometric_mean([r["test_vs_tuned_adam"] for r in mine]),
            "train_at_most_tuned_adam": sum(r["train_vs_tuned_adam"] <= 1 for r in mine),
            "test_within_5pct": sum(r["test_vs_tuned_adam"] <= 1.05 for r in mine),
        }
        if label == "NeuralGraphOpt":
            for other, key in (("FF", "beats_ff"), ("Muon tuned", "beats_tuned_muon")):
                pairs = [(final[t, label], final[t, other]) for t, o in final if o == other and (t, label) in final]
                entry[key] = sum(a < b for a, b in pairs) if pairs else None
                entry[f"{key}_of"] = len(pairs)
        summary.append(entry)
    return summary


def summarize(runs: list[dict[str, Any]], tasks: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per (task, optimizer) rows (:func:`task_rows`) and the per-optimizer summary (:func:`overall`)."""
    rows = [row for task in tasks for row in task_rows(runs, task)]
    return rows, overall(rows)


# -- the report ------------------------------------------------------------------------------------------------


def plot(runs: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    """Seed-mean training curves, one panel per task (4 per row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for label, (lr, group) in groups_of(runs, task).items():
            curve = [v if math.isfinite(v) else math.nan for v in _mean_curve(group)]
            name = label if label in FIXED else f"{label} ({lr:g})"
            ax.plot([(i + 1) * SMOOTH for i in range(len(curve))], curve, label=name)
        ax.set(title=task, xlabel="step", ylabel="training loss", yscale="log")
        ax.legend(fontsize=6)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _loss(mean: float, std: float) -> str:
    return f"{mean:.4g} ± {std:.2g}" if math.isfinite(mean) else "inf (diverged)"


def _count(entry: dict[str, Any], key: str) -> str:
    return "" if entry.get(key) is None else f"{entry[key]}/{entry[key + '_of']}"


def table(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    """Markdown: the summary per optimizer, then the rows per (task, optimizer)."""
    steps = lambda s: "never" if s == math.inf else f"{s:.0f}"  # noqa: E731
    lines = ["| optimizer | tasks | train / tuned Adam (geo. mean) | test / tuned Adam (geo. mean) | train <= tuned "
             "Adam | test within 5 % of tuned Adam | NeuralGraphOpt beats FF | beats tuned Muon |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in summary:
        lines.append(f"| {e['optimizer']} | {e['tasks']} | {e['train_geomean']:.3g} | {e['test_geomean']:.3g} | "
                     f"{e['train_at_most_tuned_adam']} | {e['test_within_5pct']} | {_count(e, 'beats_ff')} | "
                     f"{_count(e, 'beats_tuned_muon')} |")
    lines += ["", "| task | optimizer | lr | final train loss | final test loss | train / tuned Adam | test / tuned "
              "Adam | steps to reach tuned Adam's final |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['optimizer']} | {r['lr']:g} | {_loss(r['final_train'], r['final_train_std'])}"
                     f" | {_loss(r['final_test'], r['final_test_std'])} | {r['train_vs_tuned_adam']:.3g} | "
                     f"{r['test_vs_tuned_adam']:.3g} | {steps(r['steps_to_tuned_adam_final'])} |")
    return "\n".join(lines)


def report(record: dict[str, Any], out: Path, ff_rule: str | None) -> None:
    """Summary table, plot and JSON of a finished set of runs (``record["runs"]``; ``record["rule"]``:
    NeuralGraphOpt's rule when it was not the default)."""
    from l2o.optim import DEFAULT_RULE

    rule = record.get("rule") or DEFAULT_RULE
    tasks = list(dict.fromkeys(r["task"] for r in record["runs"]))
    rows, summary = summarize(record["runs"], tasks)
    out.mkdir(parents=True, exist_ok=True)
    plot(record["runs"], tasks, out / "l2o_quality.png")
    markdown = (table(rows, summary)
                + f"\n\nNeuralGraphOpt rule: `{rule}`, FF rule: `{ff_rule or 'ff (untrained)'}`; {record['steps']} "
                f"steps, seeds {record['seeds']}. Tuned: the lr with the lowest final training loss on the first "
                f"seed, on the grid {record['grid']} (Adam, AdamW, Muon) or {record.get('learned_grid', 'none')} "
                f"(NeuralGraphOpt). Losses are means ± std over seeds of the last {SMOOTH}-step window (test: "
                f"{TEST_BATCHES} test batches at the end); ratios are per task, so tasks of any loss scale weigh "
                "the same in the geometric means; a diverged run counts as an infinite loss. Muon: torch.optim.Muon "
                "(match_rms_adamw) on hidden weight matrices, AdamW on the rest (on the CNN tasks, all of it). "
                "Curves in `l2o_quality.png`.")
    record = {**record, "rows": rows, "summary": summary}
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
    parser.add_argument("--optimizers", nargs="+", choices=KINDS, default=list(KINDS),
                        help="a subset of the optimizer kinds (Adam always runs: it is the reference)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("results/l2o_quality"))
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder of cached baseline runs (default: <out>/runs_cache)")
    parser.add_argument("--cache-from", type=Path, default=None,
                        help="first fill the cache with the baseline runs of this l2o_quality.json (e.g. the "
                        "committed result), so that only the learned optimizer trains")
    parser.add_argument("--summarize", type=Path, default=None,
                        help="only rebuild the table and plot from the runs in this l2o_quality.json")
    args = parser.parse_args(argv)
    ff_rule = args.ff_rule or _shipped(BASELINE_RULE)
    if args.summarize is not None:
        record = json.loads(args.summarize.read_text())
        keep = ("command", "machine", "quick", "steps", "seeds", "grid", "learned_grid", "optimizers", "runs", "rule")
        if args.rule is not None:
            record["rule"] = args.rule
        report({k: record[k] for k in keep if k in record}, args.out, ff_rule)
        return record
    tasks = args.tasks or (["cnn-digits", "mlp-wide-deep"] if args.quick else list(TASKS))
    steps = args.steps or (150 if args.quick else 1000)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    grid = QUICK_GRID if args.quick else ADAM_GRID
    kinds = list(dict.fromkeys(["Adam", *args.optimizers]))
    cache = args.cache or args.out / "runs_cache"
    if args.cache_from is not None:
        print(f"{fill_cache(args.cache_from, cache)} baseline runs from {args.cache_from} written to {cache}")
    run_all = lambda jobs, desc: run_jobs(jobs, steps, ff_rule, args.rule, args.workers, cache, desc)  # noqa: E731
    done = run_all(first_jobs(tasks, kinds, seeds, grid, args.graph_ablation), "training runs (1/2)")
    later = [job for job in tuned_jobs(list(done.values()), tasks, seeds) if job not in done]
    done |= run_all(later, "training runs (2/2)")
    record = {"quick": args.quick, "steps": steps, "seeds": seeds, "grid": list(grid),
              "learned_grid": list(LEARNED_GRID), "optimizers": kinds, "runs": list(done.values())}
    if args.rule is not None:
        record["rule"] = args.rule
    report(record, args.out, ff_rule)
    return record


def _shipped(name: str) -> str | None:
    from l2o.hub import PRETRAINED_DIR

    return name if (PRETRAINED_DIR / name).is_dir() else None


if __name__ == "__main__":
    main()
