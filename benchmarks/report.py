"""Generate ``docs/results.md`` from the committed benchmark outputs (never edit that page by hand).

    python -m benchmarks.report --results benchmarks/results --docs docs

To refresh a section: ``python -m benchmarks NAME --results benchmarks/results --docs docs``.
Each benchmark wrote ``<results>/<name>/<name>.md`` (+ JSON and PNGs); this collects them in a
fixed order, copies the PNGs to ``docs/images/results/`` and appends the comparison with the
published numbers.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
"""The committed benchmark outputs that the documentation shows."""
ORDER = ("step_overhead", "step_overhead_v6", "step_overhead_v5", "step_overhead_v4", "step_overhead_cuda",
         "head_cost", "fused_parity", "l2o_quality", "l2o_quality_ablation", "l2o_quality_ablation_orthogonal",
         "l2o_quality_broad", "l2o_quality_v7_fp32", "l2o_quality_v6", "l2o_quality_v5", "l2o_quality_v3",
         "rule_validation", "rule_validation_stepsize", "rule_validation_centred", "rule_validation_long",
         "rule_validation_pes", "rule_validation_orthogonal", "rule_validation_broad", "recipe_spread",
         "meta_throughput", "meta_throughput_trainer", "meta_throughput_processes", "graph_build",
         "encoders_throughput", "encoders_throughput_bf16", "encoders_throughput_cuda", "zoo_throughput",
         "weight_space", "weight_space_classify",
         "weight_space_classify_dwsnets", "weight_space_classify_ng", "weight_space_ablation", "weight_space_views",
         "weight_space_probes", "weight_space_bf16", "weight_space_generalization",
         "weight_space_generalization_large")
VARIANTS = {
    "step_overhead_cuda": "python -m benchmarks.step_overhead --device cuda",
    "step_overhead_v4": "python -m benchmarks.step_overhead --rule neural-graph-v4 (the default before v5)",
    "step_overhead_v5": "python -m benchmarks.step_overhead --rule neural-graph-v5 (the default before v6)",
    "step_overhead_v6": "python -m benchmarks.step_overhead --rule neural-graph-v6 (the default before v7)",
    "encoders_throughput_cuda": "python -m benchmarks.encoders_throughput --device cuda",
    "encoders_throughput_bf16": "python -m benchmarks.encoders_throughput --encoders NG-GNN 'NG-T dense' "
                                "--paths sparse compiled compiled-bf16",
    "l2o_quality_v3": "python -m benchmarks.l2o_quality --rule neural-graph-v3 (4-task version, before 2026-12-03)",
    "l2o_quality_v5": "python -m benchmarks.l2o_quality --rule neural-graph-v5 --ff-rule ff-v3 (the default before v6)",
    "l2o_quality_v6": "python -m benchmarks.l2o_quality --rule neural-graph-v6 --ff-rule tensor-stepsize-v1 "
                      "(the default before v7)",
    "l2o_quality_ablation": "python -m benchmarks.l2o_quality --rule tensor-stepsize-v1 "
                            "--ff-rule runs/pes_schedule-stepsize/rule_best",
    "l2o_quality_broad": "python -m benchmarks.l2o_quality --rule BROAD (rule_best of "
                         "l2o/meta/configs/stepsize_broad.yaml; see the command in its result file)",
    "l2o_quality_v7_fp32": "python -m benchmarks.l2o_quality --rule neural-graph-v7 (float32 Newton-Schulz products, "
                           "before the bfloat16 ones shipped)",
    "l2o_quality_ablation_orthogonal": "python -m benchmarks.l2o_quality --rule neural-graph-v7 --ff-rule "
                                       "SCHEDULE_ORTHO --optimizers FF (see the command in its result file)",
    "rule_validation_stepsize": "python -m benchmarks.rule_validation --config "
                                "l2o/meta/configs/stepsize_neural_graph.yaml",
    "rule_validation_centred": "python -m benchmarks.rule_validation --config l2o/meta/configs/stepsize_centred.yaml",
    "rule_validation_long": "python -m benchmarks.rule_validation --config l2o/meta/configs/stepsize_long.yaml",
    "rule_validation_pes": "python -m benchmarks.rule_validation --config l2o/meta/configs/stepsize_pes.yaml",
    "rule_validation_orthogonal": "python -m benchmarks.rule_validation --config l2o/meta/configs/stepsize_pes.yaml "
                                  "--rules neural-graph-v6 neural-graph-v7 tensor-stepsize-v1 tensor-stepsize-v2",
    "rule_validation_broad": "python -m benchmarks.rule_validation --config l2o/meta/configs/stepsize_broad.yaml "
                             "--rules neural-graph-v7 BROAD tensor-stepsize-v2 BROAD_TWIN --tasks 16",
    "weight_space_classify": "python -m benchmarks.weight_space --size classify",
    "weight_space_classify_dwsnets": "python -m benchmarks.weight_space --size classify-dwsnets",
    "weight_space_classify_ng": "python -m benchmarks.weight_space --size classify-ng",
    "weight_space_ablation": "l2o fit inr-classify (see the command in benchmarks/results/weight_space_ablation)",
    "weight_space_views": "python -m benchmarks.weight_space --size classify-views",
    "weight_space_probes": "python -m benchmarks.weight_space --size classify-probes",
    "weight_space_bf16": "l2o fit inr-classify --bf16 (see the command in benchmarks/results/weight_space_bf16)",
    "weight_space_generalization": "python -m benchmarks.weight_space --size generalization",
    "weight_space_generalization_large": "python -m benchmarks.weight_space --size generalization-large",
    "meta_throughput_trainer": "python -m benchmarks.meta_throughput --trainer",
    "meta_throughput_processes": "python -m benchmarks.meta_throughput --processes",
}
"""Sections written by another size or device of a benchmark, and the command that writes each."""

PUBLISHED = """## Comparison with the published numbers

- **Encoder throughput.** The reference NG-GNN implementation (hidden 32, 4 layers, batch 128 of
  2-32-32-1 SIRENs) runs 13-15 graphs/s forward+backward with 2.75 GB on a 2-core CPU, and the
  reference NG-T 4.7 graphs/s with 13.8 GB (measured on this kind of machine, see
  `/shared/REFERENCES.md`). Ours are in the table above, from the same kind of machine.
- **Learned optimizer.** The paper trains its GNN optimizer with greedy one-step truncated backprop
  for 1000 meta-iterations x 100 inner steps on a 3-conv CNN on FashionMNIST and tests on CIFAR-10;
  our shipped rule uses a CPU-sized recipe (about 20 minutes on one core) on offline MNIST-5k and
  digits tasks, so the numbers above are not comparable with the paper's figures; they compare
  NeuralGraphOpt with Adam, tuned Adam and the FF rule on the same tasks in the same run.
- **Weight-space tasks.** Published INR-classification accuracies (no probes) on the full DWSNets
  MNIST zoo (55k/5k/10k INRs): NG-GNN 91.4 %, DWSNets 85.7 %, NFN 78.5-79.1 %; with 64 probes
  NG-GNN 94.7 %, NG-T 97.3 %. Dilation editing (pixel MSE x 1e-2): NFN 2.55, NG-GNN 2.06, NG-T 1.75.
  Our zoos are built offline from MNIST-5k (5000 images), so accuracies are lower and only the
  ranking of methods on the same zoo is comparable.
"""


def build(results: Path, docs: Path) -> str:
    """Write ``docs/results.md`` from ``results``; returns the page."""
    images = docs / "images" / "results"
    images.mkdir(parents=True, exist_ok=True)
    parts = ["# Benchmark results", "",
             "Generated by `python -m benchmarks.report` from the benchmark outputs; every section names "
             "the command and machine that produced it. Timings are medians and ratios measured in the same "
             "run; shared machines are noisy.", ""]
    for name in ORDER:
        folder = results / name
        table = folder / f"{name}.md"
        if not table.exists():
            command = VARIANTS.get(name, f"python -m benchmarks {name}")
            parts += [f"## {name}", "", f"Not run yet: `{command}`.", ""]
            continue
        parts.append(table.read_text().strip())
        for png in sorted(folder.glob("*.png")):
            shutil.copy(png, images / f"{name}_{png.name}")
            parts += ["", f"![{name} {png.stem}](images/results/{name}_{png.name})"]
        parts.append("")
    parts.append(PUBLISHED)
    page = "\n".join(parts)
    (docs / "results.md").write_text(page)
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="benchmark outputs (default: the committed ones)")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    build(args.results, args.docs)
    print(f"wrote {args.docs / 'results.md'}")


if __name__ == "__main__":
    main()
