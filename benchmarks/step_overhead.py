"""Optimizer step time and memory: Adam, AdamW, Muon (torch's, on the hidden weight matrices, AdamW
on the rest, as in ``benchmarks/l2o_quality.py``), the FF learned optimizer and NeuralGraphOpt, the
latter with its reference step (``compile=False``) and its fused, compiled step (``compile=True``).

For four reference models (MLP 784-256-256-10, CNN 1->32->64->64 3x3 + GAP + linear, a 2-layer
transformer encoder d_model 128 on sequences of 64, MLP 784-2048-2048-10; on a GPU also a
ViT-B/16-sized model in bf16, 86M parameters, batch 32 of 224x224) it measures, each optimizer in a
fresh process: forward+backward time of a batch, the first ``step()`` (for the fused step this
includes compiling, from an empty inductor cache made for the run), the steady ``step()`` time
(median), optimizer state bytes per parameter and the extra memory of a steady-state step (peak RSS
growth) per parameter, checked against the targets; then step time against parameter count (MLPs
from 0.1M to 38M parameters, log-log plot). Ratios against Adam, the FF rule and the model's
forward+backward come from the same run. Timings are printed, never asserted.

    python -m benchmarks.step_overhead                 # full (about 20 minutes on 2 cores)
    python -m benchmarks.step_overhead --quick         # a few minutes (compiling dominates)
    python -m benchmarks.step_overhead --compile off   # the reference step only
    python -m benchmarks.step_overhead --device cuda   # on the GPU: results named step_overhead_cuda

On a GPU, 'transient' is the growth of ``torch.cuda.max_memory_allocated`` during a steady-state
step.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from benchmarks.common import free_cores, median_time, run_isolated, write_results

BATCH = 128


def mlp(width: int) -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    return model, torch.randn(BATCH, 784)


def cnn() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    return model, torch.randn(BATCH, 1, 28, 28)


def transformer() -> tuple[nn.Module, torch.Tensor]:
    layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(128, 10))
    return model, torch.randn(BATCH // 4, 64, 128)


class ViT(nn.Module):
    """ViT-B/16 in size (86M parameters): 16x16 patches, 12 pre-norm layers of width 768, 12 heads,
    MLP 3072, a class token and learned positions."""

    def __init__(self, image: int = 224, patch: int = 16, width: int = 768, depth: int = 12, classes: int = 1000):
        super().__init__()
        self.patches = nn.Conv2d(3, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 12, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos
        return self.head(self.encoder(tokens)[:, 0])


def vit() -> tuple[nn.Module, torch.Tensor]:
    return ViT().to(torch.bfloat16), torch.randn(32, 3, 224, 224, dtype=torch.bfloat16)


MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "MLP 784-256-256-10": lambda: mlp(256),
    "CNN 32-64-64": cnn,
    "Transformer 2x128": transformer,
    "MLP 784-2048-2048-10": lambda: mlp(2048),
}
GPU_MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {"ViT-B/16 bf16": vit}
"""Measured only on a GPU: a ViT-B/16 step on two CPU cores would take minutes."""


def make_optimizer(name: str, model: nn.Module, rule: str | None = None) -> torch.optim.Optimizer:
    """``name`` from :data:`OPTIMIZERS`; the NeuralGraphOpt rows use ``rule`` (default: the shipped default)."""
    from l2o import FFRule, NeuralGraphOpt
    from l2o.optim import DEFAULT_RULE

    rule = rule or DEFAULT_RULE

    if name == "Adam":
        return torch.optim.Adam(model.parameters(), lr=1e-3)
    if name == "AdamW":
        return torch.optim.AdamW(model.parameters(), lr=1e-3)
    if name == "Muon":
        from benchmarks.l2o_quality import MuonAdamW

        return MuonAdamW(model, lr=1e-3)  # type: ignore[return-value]  # steps and has a state_dict: all measure() reads
    if name == "FF":
        return NeuralGraphOpt(model.parameters(), rule=FFRule())
    if name == "NeuralGraphOpt":
        return NeuralGraphOpt(model.parameters(), rule=rule, model=model, compile=False)
    if name == FUSED:
        return NeuralGraphOpt(model.parameters(), rule=rule, model=model, compile=True)
    raise ValueError(f"unknown optimizer {name!r}")


FUSED = "NeuralGraphOpt fused"
OPTIMIZERS = ("Adam", "AdamW", "Muon", "FF", "NeuralGraphOpt", FUSED)


def _memory(key: str) -> int:
    """``VmRSS`` (resident) or ``VmHWM`` (its high-water mark) of this process, in bytes (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset the high-water mark to the current RSS (``/proc/self/clear_refs``, Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def _tensor_bytes(tree: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(tree) if isinstance(t, torch.Tensor))


def _transient_bytes(fn: Callable[[], Any], cuda: bool) -> int:
    """Memory ``fn()`` allocates above what is held before it: the growth of the CUDA peak allocation,
    or of the process's peak RSS (Linux)."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _memory("VmRSS")
    _reset_peak()
    fn()
    return _memory("VmHWM") - before


def measure(model_fn: Callable[[], tuple[nn.Module, torch.Tensor]], optimizer: str, repeats: int,
            device: str = "cpu", rule: str | None = None) -> dict[str, float]:
    """One (model, optimizer) pair on ``device``, in the calling process. Returns per-parameter figures."""
    torch.manual_seed(0)
    model, batch = model_fn()
    model, batch = model.to(device), batch.to(device)
    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else lambda: None
    n = sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    opt = make_optimizer(optimizer, model, rule)
    sync()
    start = time.perf_counter()
    opt.step()  # allocates the state (and compiles the fused step)
    sync()
    first = time.perf_counter() - start
    gc.collect()
    transient = _transient_bytes(opt.step, cuda)  # a steady-state step: on top of params, grads and state
    state = _tensor_bytes(opt.state_dict()["state"])
    step = median_time(opt.step, repeats, warmup=1, sync=sync)

    def forward_backward() -> None:
        model.zero_grad()
        out = model(batch)
        out.float().pow(2).mean().backward()

    fwd_bwd = median_time(forward_backward, repeats, warmup=1, sync=sync)
    return {
        "params": n, "step_s": step, "first_step_s": first, "forward_backward_s": fwd_bwd,
        "state_bytes_per_param": state / n,
        "transient_bytes_per_param": transient / n, "step_us_per_param": step / n * 1e6,
    }


def measure_keyed(model_key: tuple[str, int], optimizer: str, repeats: int, device: str = "cpu",
                  rule: str | None = None) -> dict[str, float]:
    """:func:`measure` on a reference model (``(name, 0)``) or an MLP of width ``w`` (``("mlp", w)``)."""
    kind, width = model_key
    models = {**MODELS, **GPU_MODELS}
    return measure(models[kind] if kind in models else (lambda: mlp(width)), optimizer, repeats, device, rule)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | params | optimizer | fwd+bwd ms | first step s | step ms | step / Adam | step / FF | "
        "step / fwd+bwd | step us/param | state B/param | transient B/param |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['optimizer']} | {r['forward_backward_s'] * 1e3:.1f} | "
            f"{r['first_step_s']:.2f} | {r['step_s'] * 1e3:.1f} | {r['vs_adam']:.1f}x | {r['vs_ff']:.2f}x | "
            f"{r['step_s'] / r['forward_backward_s']:.2f}x | {r['step_us_per_param']:.3f} | "
            f"{r['state_bytes_per_param']:.1f} | {r['transient_bytes_per_param']:.1f} |"
        )
    return "\n".join(lines)


NAIVE_US_PER_PARAM = 0.4
"""Lower end of a straightforward per-parameter MLP rule's step cost on a 2-core CPU (0.4-0.7 us)."""


def targets(rows: list[dict[str, Any]]) -> str:
    """NeuralGraphOpt against the design targets, from the measured rows: step at most half the naive
    per-parameter cost, state <= 16 B/param (per element; the Adafactor row/column statistics add
    12 B per matrix row and column on top), transient <= 8 B/param above 1M parameters."""
    lines = ["| model | step us/param (target <= %.2f) | step / FF | state B/param (16 + row/col stats) | "
             "transient B/param (<= 8 above 1M params) |" % (NAIVE_US_PER_PARAM / 2), "|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["optimizer"] != "NeuralGraphOpt":
            continue
        ok = r["step_us_per_param"] <= NAIVE_US_PER_PARAM / 2
        mem_ok = r["params"] < 1e6 or r["transient_bytes_per_param"] <= 8
        lines.append(f"| {r['model']} | {r['step_us_per_param']:.3f} {'met' if ok else 'MISSED'} | {r['vs_ff']:.2f}x | "
                     f"{r['state_bytes_per_param']:.1f} {'met' if r['state_bytes_per_param'] < 17 else 'MISSED'} | "
                     f"{r['transient_bytes_per_param']:.1f} {'met' if mem_ok else 'MISSED'} |")
    return "\n".join(lines)


FUSED_VS_ADAM = {"MLP 784-2048-2048-10": 4.0}
"""CPU targets of the fused step, as a multiple of Adam's step: 4x on the 5.8M-parameter MLP and
8x (:data:`FUSED_VS_ADAM_SMALL`) on the three small reference models."""
FUSED_VS_ADAM_SMALL = 8.0


def fused_targets(rows: list[dict[str, Any]], points: list[dict[str, Any]], device: str) -> str:
    """The fused step against its targets. CPU: step / Adam <= 4 on the 5.8M MLP and <= 8 on the
    small models, transient <= 8 B/param above 1M parameters. GPU: step <= 1.5x forward+backward on
    the 38M MLP and the ViT, and <= 10x Adam's (fused) step above 10M parameters."""
    fused = [r for r in rows if r["optimizer"] == FUSED]
    if device == "cpu":
        lines = ["| model | fused step / Adam (target) | transient B/param (<= 8 above 1M params) | "
                 "fused / reference step | first step s (compile) |", "|---|---:|---:|---:|---:|"]
        for r in fused:
            limit = FUSED_VS_ADAM.get(r["model"], FUSED_VS_ADAM_SMALL)
            mem_ok = r["params"] < 1e6 or r["transient_bytes_per_param"] <= 8
            met = "met" if r["vs_adam"] <= limit else "MISSED"
            vs_reference = "- (not run)" if r["vs_reference"] is None else f"{r['vs_reference']:.2f}x"
            lines.append(f"| {r['model']} | {r['vs_adam']:.1f}x (<= {limit:g}) {met} | "
                         f"{r['transient_bytes_per_param']:.1f} {'met' if mem_ok else 'MISSED'} | "
                         f"{vs_reference} | {r['first_step_s']:.1f} |")
        return "\n".join(lines)
    largest = max((p for p in points if p["optimizer"] == FUSED), key=lambda p: p["params"], default=None)
    adam = {p["width"]: p for p in points if p["optimizer"] == "Adam"}
    cases = [(r["model"], r, r["vs_adam"]) for r in fused if r["params"] > 1e7]
    if largest is not None:
        vs_adam = largest["step_s"] / adam[largest["width"]]["step_s"]
        cases.append((f"MLP {largest['params'] / 1e6:.0f}M", largest, vs_adam))
    lines = ["| model | step / fwd+bwd (<= 1.5) | step / Adam (<= 10 above 10M params) |", "|---|---:|---:|"]
    for model, r, vs_adam in cases:
        ratio = r["step_s"] / r["forward_backward_s"]
        lines.append(f"| {model} | {ratio:.2f}x {'met' if ratio <= 1.5 else 'MISSED'} | "
                     f"{vs_adam:.1f}x {'met' if vs_adam <= 10 else 'MISSED'} |")
    return "\n".join(lines)


def scaling_plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for opt in sorted({p["optimizer"] for p in points}):
        series = sorted((p["params"], p["step_s"]) for p in points if p["optimizer"] == opt)
        ax.plot(*zip(*series), marker="o", label=opt)
    ax.set(xscale="log", yscale="log", xlabel="parameters (MLP 784-w-w-10)", ylabel="step time (s)",
           title="Optimizer step time vs model size")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small models and few repeats (about a minute)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the free cores)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--compile", choices=["on", "off", "both"], default="both",
                        help="NeuralGraphOpt rows: the fused compiled step, the reference step, or both (default)")
    parser.add_argument("--rule", default=None, help="NeuralGraphOpt's rule (default: the shipped default)")
    parser.add_argument("--widths", type=int, nargs="+", default=None,
                        help="hidden widths of the scaling MLPs (default: 96 ... 5792, 0.1M-38M parameters)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/<name>")
    args = parser.parse_args(argv)
    name = "step_overhead" if args.device == "cpu" else "step_overhead_cuda"
    args.out = args.out or Path("results") / name
    threads = args.threads or free_cores()
    repeats = args.repeats or (2 if args.quick else 5)
    models = list(MODELS)[:2] if args.quick else list(MODELS)
    if args.device == "cuda" and not args.quick:
        models += list(GPU_MODELS)
    widths = args.widths or ((64, 256) if args.quick else (96, 256, 512, 1024, 2048, 4096, 5792))
    learned = {"on": (FUSED,), "off": ("NeuralGraphOpt",), "both": ("NeuralGraphOpt", FUSED)}[args.compile]
    optimizers = ("Adam", "AdamW", "Muon", "FF", *learned)
    # compile times are measured from an empty cache (the measurements' processes inherit it)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="l2o_step_overhead_inductor_")

    from tqdm.auto import tqdm

    # on the CPU each measurement gets a fresh process (its own RSS high-water mark); CUDA peak memory
    # is reset per measurement, so there they share this one (a spawned process costs seconds)
    measure_in = run_isolated if args.device == "cpu" else lambda fn, *a, threads: fn(*a)
    rows = []
    for model in tqdm(models, desc="reference models"):
        results = {opt: measure_in(measure_keyed, (model, 0), opt, repeats, args.device, args.rule, threads=threads)
                   for opt in optimizers}
        for opt, r in results.items():
            rows.append({"model": model, "optimizer": opt, **r, "vs_adam": r["step_s"] / results["Adam"]["step_s"],
                         "vs_ff": r["step_s"] / results["FF"]["step_s"],
                         "vs_reference": r["step_s"] / results["NeuralGraphOpt"]["step_s"]
                         if "NeuralGraphOpt" in results else None})
    points = []
    scaled = ("Adam", "FF", *learned)
    for width in tqdm(widths, desc="scaling"):
        for opt in scaled:
            result = measure_in(measure_keyed, ("mlp", width), opt, repeats, args.device, args.rule, threads=threads)
            points.append({"width": width, "optimizer": opt, **result})
    args.out.mkdir(parents=True, exist_ok=True)
    scaling_plot(points, args.out / "step_scaling.png")
    scale_lines = ["| params | " + " | ".join(f"{o} step ms" for o in scaled) + " |",
                   "|---:|" + "---:|" * len(scaled)]
    for width in widths:
        by = {p["optimizer"]: p for p in points if p["width"] == width}
        scale_lines.append(f"| {by['Adam']['params'] / 1e6:.2f}M | " +
                           " | ".join(f"{by[o]['step_s'] * 1e3:.1f}" for o in scaled) + " |")
    checked = ""
    if args.device == "cpu" and "NeuralGraphOpt" in learned:
        checked += "\n\nNeuralGraphOpt (reference step) against the design targets:\n\n" + targets(rows)
    if FUSED in learned:
        checked += "\n\nThe fused step against its targets:\n\n" + fused_targets(rows, points, args.device)
    memory = ("the growth of `torch.cuda.max_memory_allocated` during a steady-state step (the second)"
              if args.device != "cpu" else "the growth of the process's peak RSS during a steady-state step (the "
              "second), over the resident memory before it (page granularity: small models read high)")
    from l2o.optim import DEFAULT_RULE

    markdown = (f"Device: {args.device}. NeuralGraphOpt's rule: `{args.rule or DEFAULT_RULE}`.\n\n"
                + table(rows) + checked
                + "\n\nStep time against model size (plot: `step_scaling.png`):\n\n"
                + "\n".join(scale_lines)
                + "\n\nRatios are against Adam, the FF rule, the reference step and the model's forward+backward "
                "measured in the same run. 'first step' includes compiling the fused step from an empty cache "
                "(inductor caches on disk, so a later process compiles only new shapes). 'state' counts the "
                f"tensors in the optimizer's state_dict; 'transient' is {memory}.")
    record = {"quick": args.quick, "device": args.device, "compile": args.compile, "repeats": repeats,
              "rule": args.rule or DEFAULT_RULE,
              "threads": threads, "batch": BATCH,
              "rows": rows, "scaling": points}
    write_results(args.out, name, record, markdown)
    return record


if __name__ == "__main__":
    main()
