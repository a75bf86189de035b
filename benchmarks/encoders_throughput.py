"""Forward+backward throughput and peak memory of NG-GNN and NG-T.

Workloads: a batch of 2-32-32-1 SIRENs (one architecture) and a batch of small CNNs of mixed
architectures (2-3 conv layers, 4-16 channels, 3x3/5x5 kernels, global pooling, linear head).
Paths: ``sparse`` (PyG batch, any architectures), ``dense`` (:mod:`encoders.dense`, one
architecture per batch, so SIRENs only), ``compiled`` (the dense path through
``torch.compile``; its first-call compile time is reported) and ``compiled-bf16`` (the same under
bfloat16 autocast, as ``FitConfig(bf16=True)`` trains). Speedups are against the sparse
path of the same encoder, measured in the same run.
Each (encoder, workload, device) runs in a fresh process. CPU peak memory is that process's peak
RSS growth during forward+backward over its state after building the model and the batch
(``resource.ru_maxrss``; the whole process's peak is reported too); on CUDA it is
``torch.cuda.max_memory_allocated``. Timings are medians over repeats.

    python -m benchmarks.encoders_throughput            # full: batch 128, 5 repeats
    python -m benchmarks.encoders_throughput --quick    # a few minutes (batch 32, SIRENs only)
    python -m benchmarks.encoders_throughput --figure docs/images/encoders_throughput.png
    python -m benchmarks.encoders_throughput --device cuda   # the GPU alone: results named encoders_throughput_cuda

Writes ``<name>.json``, ``<name>.md`` and ``throughput.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch_geometric.data import Batch  # noqa: E402

from benchmarks.common import command_line, free_cores, run_isolated, write_results  # noqa: E402
from encoders import NGGNN, NeuralGraph, NGGNNConfig, NGTransformer, NGTransformerConfig, degree_histograms  # noqa: E402
from encoders.dense import DenseGraphs  # noqa: E402
from encoders.zoo.siren import Sine  # noqa: E402

# (name, encoder class, config options): hidden 32, 4 layers, as the reference figures
ENCODERS = {
    "NG-GNN": (NGGNN, NGGNNConfig, {}),
    "NG-GNN cheap": (NGGNN, NGGNNConfig, {"film": "elementwise", "edge_updates": False}),
    "NG-T sparse": (NGTransformer, NGTransformerConfig, {"attention": "sparse"}),
    "NG-T dense": (NGTransformer, NGTransformerConfig, {"attention": "dense"}),
}
PATHS = ("sparse", "dense", "compiled", "compiled-bf16")
# reference implementation, 2-core CPU, batch 128 of 2-32-32-1 SIRENs (REFERENCES.md section 2)
REFERENCE = {"NG-GNN": {"graphs_per_s": 14.0, "peak_mb": 2750.0}, "NG-T": {"graphs_per_s": 4.7, "peak_mb": 13800.0}}


def siren() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 32), Sine(), nn.Linear(32, 32), Sine(), nn.Linear(32, 1))


def small_cnn(gen: torch.Generator) -> nn.Module:
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=gen))]  # noqa: E731
    layers, channels = [], 1
    for _ in range(pick([2, 3])):
        out, kernel = pick([4, 8, 16]), pick([3, 5])
        layers += [nn.Conv2d(channels, out, kernel, padding=kernel // 2), pick([nn.ReLU(), nn.GELU(), nn.Tanh()])]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def make_graphs(workload: str, batch: int) -> list[NeuralGraph]:
    torch.manual_seed(0)
    if workload == "siren":
        return [NeuralGraph.from_module(siren()) for _ in range(batch)]
    gen = torch.Generator().manual_seed(0)
    return [NeuralGraph.from_module(small_cnn(gen), kernel_grid=(5, 5)) for _ in range(batch)]


def measure(encoder: str, workload: str, device: str, batch: int, repeats: int, path: str = "sparse") -> dict:
    """Forward+backward throughput and peak memory of one encoder on one path; run it in a fresh process."""
    torch.manual_seed(0)
    graphs = make_graphs(workload, batch)
    data = Batch.from_data_list([g.to_pyg() for g in graphs]).to(device)
    cls, config_cls, options = ENCODERS[encoder]
    config = config_cls(node_features=data.x.shape[1], edge_features=data.edge_attr.shape[1], hidden=32, layers=4,
                        **options)
    model = (cls(config, degree_histograms(graphs)) if cls is NGGNN else cls(config)).to(device)
    if path != "sparse":
        data = DenseGraphs.from_flat(graphs[0], torch.stack([g.to_flat() for g in graphs]).to(device))
    if path.startswith("compiled"):
        model.compile_dense()

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=path.endswith("bf16")):
            x, e = model(data)
        (x.float().square().mean() + e.float().square().mean()).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, after building everything
    start = time.perf_counter()
    step()  # warm-up (and the compile)
    first_s = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else (rss_peak - rss_ready) / 1024
    median = statistics.median(times)
    return {
        "encoder": encoder, "workload": workload, "path": path, "device": device, "batch": batch, "repeats": repeats,
        "first_call_s": first_s,
        "nodes": data.num_nodes, "edges": data.num_edges, "params": sum(p.numel() for p in model.parameters()),
        "median_s": median, "graphs_per_s": batch / median, "peak_mb": peak_mb, "process_peak_mb": rss_peak / 1024,
    }


def speedup(result: dict, results: list[dict]) -> float | None:
    """Graphs/s over the sparse path's for the same encoder, workload and device (None without one)."""
    for r in results:
        if r["path"] == "sparse" and all(r[k] == result[k] for k in ("encoder", "workload", "device")):
            return result["graphs_per_s"] / r["graphs_per_s"]
    return None


def markdown(results: list[dict]) -> str:
    lines = [
        "| encoder | workload | path | device | batch | nodes | edges | params | median s/batch | graphs/s "
        "| x sparse | first call s | peak MB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = speedup(r, results)
        lines.append(
            f"| {r['encoder']} | {r['workload']} | {r['path']} | {r['device']} | {r['batch']} | {r['nodes']} | "
            f"{r['edges']} | {r['params']} | {r['median_s']:.3f} | {r['graphs_per_s']:.1f} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} | {r['first_call_s']:.1f} | {r['peak_mb']:.0f} |"
        )
    lines += ["", "Reference implementation (2-core CPU, batch 128 of 2-32-32-1 SIRENs, hidden 32, 4 layers): "
              + "; ".join(f"{k} {v['graphs_per_s']} graphs/s, {v['peak_mb']:.0f} MB" for k, v in REFERENCE.items()),
              ""]
    return "\n".join(lines)


def figure(results: list[dict], path: Path) -> None:
    """Throughput and peak memory on the SIREN workload (first device), reference figures as ticks."""
    rows = [r for r in results if r["workload"] == "siren"]
    rows = [r for r in rows if r["device"] == rows[0]["device"]]
    names = [f"{r['encoder']} ({r['path']})" for r in rows]
    refs = [REFERENCE["NG-GNN" if name.startswith("NG-GNN") else "NG-T"] for name in names]
    fig, axes = plt.subplots(1, 2, figsize=(9, 1.2 + 0.35 * len(rows)), sharey=True)
    panels = [("graphs_per_s", 1.0, "graphs/s, forward+backward"), ("peak_mb", 1 / 1024, "peak memory (GB)")]
    for ax, (key, scale, label) in zip(axes, panels):
        ax.barh(names, [r[key] * scale for r in rows], color="tab:blue", label="l2o encoders")
        ax.scatter([ref[key] * scale for ref in refs], names, marker="|", s=400, color="black", zorder=3,
                   label="reference implementation")
        ax.set_xlabel(label)
        ax.set_xlim(left=0)
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"batch of {rows[0]['batch']} SIRENs 2-32-32-1, hidden 32, 4 layers, {rows[0]['device']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 32, 2 repeats, SIRENs only (< 1 minute)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: the cores not busy "
                        "with other work, judged from the load average; at least 1)")
    parser.add_argument("--encoders", nargs="+", choices=list(ENCODERS), default=list(ENCODERS))
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS),
                        help="dense paths run on the one-architecture (SIREN) workload only")
    parser.add_argument("--out", type=Path, default=None, help="default: results/<name>")
    parser.add_argument("--figure", type=Path, help="also write the throughput figure here")
    args = parser.parse_args(argv)
    name = "encoders_throughput_cuda" if args.device == "cuda" else "encoders_throughput"
    args.out = args.out or Path("results") / name
    batch, repeats = (32, 2) if args.quick else (args.batch, args.repeats)
    workloads = ["siren"] if args.quick else ["siren", "cnn"]
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if args.threads is None:  # oversubscribed cores make thread hand-offs dominate small ops
        args.threads = free_cores()
    print(f"{command_line()} (threads: {args.threads})")
    results = []
    for device in devices:
        for workload in workloads:
            for encoder in args.encoders:
                for path in [p for p in args.paths if p == "sparse" or workload == "siren"]:
                    r = run_isolated(measure, encoder, workload, device, batch, repeats, path, threads=args.threads)
                    results.append(r)
                    print(f"{encoder:13s} {workload:6s} {path:13s} {device:4s} batch {batch:4d}: {r['median_s']:.3f} "
                          f"s/batch, {r['graphs_per_s']:8.1f} graphs/s, peak {r['peak_mb']:7.0f} MB", flush=True)
    write_results(args.out, name, {"threads": args.threads, "reference": REFERENCE,
                                                    "results": results}, markdown(results))
    figure(results, args.out / "throughput.png")
    if args.figure:
        figure(results, args.figure)


if __name__ == "__main__":
    main()
