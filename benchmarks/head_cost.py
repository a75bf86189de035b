"""What the per-element head costs on its own, compiled as the fused step compiles it, against
Adam's whole step on the same number of parameters.

The fused step's update loop (:func:`l2o.fused.tensor_update_`) evaluates, per element, a head of
9 features -> ``hidden`` units -> 2 outputs (:func:`l2o.fused.head_outputs`, unrolled over the
units). This benchmark times that same code alone on a ``[rows, cols]`` tensor (9 feature tensors
and the row and column context tables in, direction and magnitude combined into one output), for
the shipped head (16 SiLU units) and for cheaper designs a new rule could choose (fewer units, an
activation without an exponential), and compares it with
``torch.optim.Adam``'s default step on a parameter of the same size. The ratio bounds what any
fused step with that head can reach against Adam: statistics, features and fixed costs come on
top of it. Timings are printed, never asserted.

    python -m benchmarks.head_cost --threads 1            # 2048 x 2048 and 256 x 784 tensors
    python -m benchmarks.head_cost --quick                # a small tensor, for a smoke run
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import free_cores, median_time, write_results
from l2o import fused

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "SiLU (shipped)": fused._silu,
    "ReLU": torch.relu,
}
HEADS = (("SiLU (shipped)", 16), ("SiLU (shipped)", 8), ("ReLU", 16), ("ReLU", 8))
N_FEATURES = 9


def measure(shape: tuple[int, int], activation: str, hidden: int, repeats: int) -> dict[str, Any]:
    """Median seconds of the compiled head on ``shape`` and ns per element."""
    gen = torch.Generator().manual_seed(0)
    features = [torch.randn(shape, generator=gen) for _ in range(N_FEATURES)]
    weight, out = torch.randn(hidden, N_FEATURES, generator=gen) * 0.3, torch.randn(2, hidden, generator=gen) * 0.1
    rows, cols = torch.randn(hidden, shape[0], generator=gen), torch.randn(hidden, shape[1], generator=gen)
    bias = torch.zeros(2)
    act = ACTIVATIONS[activation]

    def step(f: list[Tensor], w: Tensor, o: Tensor, r: Tensor, c: Tensor) -> Tensor:
        direction, magnitude = fused.head_outputs(f, w, o, bias, lambda j: r[j][:, None] + c[j][None, :], act)
        return direction * torch.exp(magnitude)

    compiled = fused.compile_static(step)
    seconds = median_time(lambda: compiled(features, weight, out, rows, cols), repeats, warmup=2)
    n = shape[0] * shape[1]
    return {"shape": list(shape), "head": f"{hidden} x {activation}", "s": seconds, "ns_per_element": seconds / n * 1e9}


def adam_step(shape: tuple[int, int], repeats: int) -> dict[str, Any]:
    """``torch.optim.Adam()``'s default step on one ``shape`` parameter."""
    param = torch.nn.Parameter(torch.randn(shape))
    param.grad = torch.randn(shape)
    opt = torch.optim.Adam([param])
    seconds = median_time(opt.step, repeats, warmup=2)
    return {"shape": list(shape), "head": "Adam step (whole)", "s": seconds,
            "ns_per_element": seconds / (shape[0] * shape[1]) * 1e9}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| tensor | what | ms | ns / element | / Adam's step |", "|---|---|---:|---:|---:|"]
    adam = {tuple(r["shape"]): r["s"] for r in rows if r["head"].startswith("Adam")}
    for r in rows:
        shape = tuple(r["shape"])
        lines.append(f"| {shape[0]} x {shape[1]} | {r['head']} | {r['s'] * 1e3:.1f} | {r['ns_per_element']:.2f} | "
                     f"{r['s'] / adam[shape]:.1f}x |")
    return "\n".join(lines) + (
        "\n\nThe head alone (features in memory, compiled as the fused step compiles it), against "
        "`torch.optim.Adam`'s default step on a parameter of the same size, in one run (medians). "
        "A fused step with that head costs at least this ratio plus its statistics loop and fixed costs.")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small tensor, few repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the free cores)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/head_cost")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or free_cores())
    shapes, repeats = ([(64, 64)], 3) if args.quick else ([(2048, 2048), (256, 784)], 15)
    rows = []
    for shape in shapes:
        rows.append(adam_step(shape, repeats))
        rows += [measure(shape, activation, hidden, repeats) for activation, hidden in HEADS]
    if not args.quick or args.out is not None:
        out = args.out or Path(__file__).parent / "results" / "head_cost"
        write_results(out, "head_cost", {"threads": torch.get_num_threads(), "rows": rows}, markdown(rows))
    else:
        print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
