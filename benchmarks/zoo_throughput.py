"""How fast the zoos are made: SIRENs fitted per second (and their PSNR), CNN zoo models per minute.

INR fitting: SIRENs 2-32-32-1 (DWSNets conventions, the library's default fit: 80 full-batch Adam
steps at lr 5e-3, batches of 8 per process, torch.compile) on MNIST-5k 28x28 images. Three runs:

* ``main``: the default setup, ``--workers`` single-threaded processes (default: all cores); wall
  clock over the timed SIRENs, after a warm-up that compiles the step in every worker (reported);
* ``1 core``: the same in one process, with its CPU time: ``cpu_ms_per_siren`` and the projection
  ``cores / cpu_s_per_siren`` of what the cores give when no other program shares them;
* ``1 core, eager``: without torch.compile.

CNN zoo: ``make_cnn_zoo`` on digits with its defaults (16 epochs, 6 checkpoints), models per minute.
The target is >= 40 SIRENs/s reaching >= 30 dB (median) on 2 CPU cores; the load average before
and after each run is recorded, since a shared machine slows every wall-clock number.

    python -m benchmarks.zoo_throughput            # 512 SIRENs + comparisons + 8 CNNs (a few minutes)
    python -m benchmarks.zoo_throughput --quick    # 64 SIRENs, 2 CNNs

Writes ``zoo_throughput.json``, ``zoo_throughput.md`` and ``psnr.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import write_results  # noqa: E402
from encoders.data import load_mnist5k  # noqa: E402
from encoders.zoo import InrConfig, SirenFitter, make_cnn_zoo  # noqa: E402

TARGET = {"sirens_per_s": 40.0, "median_psnr_db": 30.0}


def fit_run(
    name: str, images: torch.Tensor, warmup: torch.Tensor, config: InrConfig, workers: int
) -> tuple[dict[str, Any], torch.Tensor]:
    """Fit one SIREN per image after fitting ``warmup`` (compiles the step in every worker); wall clock (and
    this process's CPU time) of the timed part."""
    load_before = os.getloadavg()[0]
    with SirenFitter(config, workers) as fitter:
        start = time.perf_counter()
        fitter.fit(warmup, list(range(len(warmup))))
        warmup_s = time.perf_counter() - start
        cpu, start = time.process_time(), time.perf_counter()
        _, psnr = fitter.fit(images, list(range(len(images))))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    row = {"run": name, "workers": workers, "compile": config.compile, "sirens": len(images),
           "sirens_per_s": len(images) / wall, "warmup_s": warmup_s, "median_psnr_db": float(psnr.median()),
           "min_psnr_db": float(psnr.min()), "p10_psnr_db": float(psnr.quantile(0.1)),
           "share_30db": float((psnr >= 30).float().mean()), "load_before": load_before,
           "load_after": os.getloadavg()[0]}
    if workers == 1:  # the work ran in this process: its CPU time is the cost
        row["cpu_ms_per_siren"] = 1e3 * cpu / len(images)
    print(f"{name:14s} {row['sirens_per_s']:6.1f} SIRENs/s, median PSNR {row['median_psnr_db']:.2f} dB "
          f"(min {row['min_psnr_db']:.2f}), warm-up {warmup_s:.1f} s, load {load_before:.1f}", flush=True)
    return row, psnr


def cnn_run(models: int, workers: int) -> dict[str, Any]:
    """Generate a small CNN zoo on digits; models per minute and the spread of test accuracy."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        zoo = make_cnn_zoo(Path(tmp) / "cnn", "digits", architectures=models, shard_size=workers, workers=workers,
                           progress=False)
        wall = time.perf_counter() - start
        epochs = max(zoo.meta["checkpoints"])
        final = [acc for acc, epoch in zip(zoo.dataset["test_acc"], zoo.dataset["epoch"]) if epoch == epochs]
    row = {"models": models, "workers": workers, "epochs": epochs, "checkpoints": len(zoo),
           "models_per_min": 60 * models / wall,
           "median_final_test_acc": float(torch.tensor(final).median()) if final else float("nan"),
           "load_before": load_before, "load_after": os.getloadavg()[0]}
    print(f"CNN zoo        {row['models_per_min']:6.1f} models/min (digits, {epochs} epochs), "
          f"median final test accuracy {row['median_final_test_acc']:.3f}", flush=True)
    return row


def markdown(rows: list[dict[str, Any]], cnn: dict[str, Any], cores: int) -> str:
    lines = ["| run | workers | compile | SIRENs | SIRENs/s | median PSNR dB | min | share >= 30 dB | warm-up s "
             "| CPU ms/SIREN | load before/after |", "|" + "---|" * 11]
    for r in rows:
        cpu = f"{r['cpu_ms_per_siren']:.1f}" if "cpu_ms_per_siren" in r else ""
        lines.append(f"| {r['run']} | {r['workers']} | {r['compile']} | {r['sirens']} | {r['sirens_per_s']:.1f} | "
                     f"{r['median_psnr_db']:.2f} | {r['min_psnr_db']:.2f} | {r['share_30db']:.1%} | "
                     f"{r['warmup_s']:.1f} | {cpu} | {r['load_before']:.1f} / {r['load_after']:.1f} |")
    main, single = rows[0], rows[1]
    projected = cores * 1e3 / single["cpu_ms_per_siren"]
    lines += ["", f"Target {TARGET['sirens_per_s']:.0f} SIRENs/s at >= {TARGET['median_psnr_db']:.0f} dB median: "
              f"measured {main['sirens_per_s']:.1f} SIRENs/s at {main['median_psnr_db']:.2f} dB on {cores} cores "
              f"(load average {main['load_before']:.1f} before the run); the CPU cost of one SIREN "
              f"({single['cpu_ms_per_siren']:.1f} ms) projects {projected:.0f} SIRENs/s on {cores} idle cores.",
              "", f"CNN zoo (digits, {cnn['models']} models, {cnn['epochs']} epochs, {cnn['workers']} workers): "
              f"{cnn['models_per_min']:.1f} models/min, median final test accuracy {cnn['median_final_test_acc']:.3f}."]
    return "\n".join(lines)


def psnr_figure(psnr: torch.Tensor, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(psnr.numpy(), bins=30)
    ax.axvline(TARGET["median_psnr_db"], color="k", linestyle="--", label="30 dB")
    ax.set_xlabel("PSNR of fitted SIREN (dB)")
    ax.set_ylabel("SIRENs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 SIRENs (32 per comparison), 2 CNNs")
    parser.add_argument("--sirens", type=int, default=512, help="SIRENs in the main run (a quarter per comparison)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--steps", type=int, default=InrConfig.steps)
    parser.add_argument("--lr", type=float, default=InrConfig.lr)
    parser.add_argument("--batch-size", type=int, default=InrConfig.batch_size)
    parser.add_argument("--cnn-models", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("results/zoo_throughput"))
    args = parser.parse_args(argv)
    n, cnn_models = (64, 2) if args.quick else (args.sirens, args.cnn_models)
    images = load_mnist5k()[0]
    warmup = images[: 2 * args.workers * args.batch_size]  # enough batches for every worker to compile its step
    timed, small = images[len(warmup):len(warmup) + n], images[len(warmup):len(warmup) + max(n // 4, 16)]
    config = InrConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size)
    eager = InrConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, compile=False)
    main_row, psnr = fit_run("main", timed, warmup, config, args.workers)
    rows = [main_row, fit_run("1 core", small, warmup[: args.batch_size], config, 1)[0],
            fit_run("1 core, eager", small, warmup[: args.batch_size], eager, 1)[0]]
    cnn = cnn_run(cnn_models, args.workers)
    record = {"target": TARGET, "config": config.to_dict(), "inr": rows, "cnn": cnn,
              "meets_target": main_row["sirens_per_s"] >= TARGET["sirens_per_s"]
              and main_row["median_psnr_db"] >= TARGET["median_psnr_db"]}
    write_results(args.out, "zoo_throughput", record, markdown(rows, cnn, args.workers))
    psnr_figure(psnr, args.out / "psnr.png")
    return record


if __name__ == "__main__":
    main()
