"""Neural graphs of the models people train: which ones trace exactly, and what building costs.

    python -m benchmarks.graph_build [--quick] [--out DIR]

Two tables:

* **Coverage.** Small random configurations (built offline, no downloads) of Hugging Face GPT-2,
  BERT, DistilBERT, Llama, Qwen2, Mistral, Gemma, T5, ViT and ResNet-18, and of torch's
  transformer layers: how the graph was made (``torch.fx``, ``torch.export``, or chained from
  shapes after a failed trace, with the reason), its size, its permutation groups, the time to
  build it, and a check that a random symmetry of the graph is one of the network (the permuted
  parameters compute the same outputs, as a relative difference).
* **Sizes.** Full-size configurations (GPT-2 small, BERT-base, ViT-B/16, ResNet-18, and Llama
  configs from 0.1B to 1B parameters), each built in a fresh process: the time to trace and build
  the graph, the time to build the optimizer's context on it, and the peak memory of the process
  above the model's own parameters, per parameter. Models are made in bfloat16 to save memory. A
  size whose estimated peak (from the measured bytes per parameter of the smaller ones) does not
  fit in this machine's memory is reported as skipped, with the estimate.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import run_isolated, write_results

# ---------------------------------------------------------------------------------------- models


def _hf(class_name: str, config_name: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        return getattr(transformers, class_name)(getattr(transformers, config_name)(**config))

    return build


_TEXT = {"vocab_size": 64}
COVERAGE: dict[str, Callable[[], nn.Module]] = {
    "GPT-2": _hf("GPT2LMHeadModel", "GPT2Config", n_embd=32, n_layer=2, n_head=4, n_positions=32, **_TEXT),
    "BERT": _hf("BertForSequenceClassification", "BertConfig", hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=64, max_position_embeddings=32, num_labels=3, **_TEXT),
    "DistilBERT": _hf("DistilBertForSequenceClassification", "DistilBertConfig", dim=32, n_layers=2, n_heads=4,
                      hidden_dim=64, **_TEXT),
    "Llama (GQA, RoPE)": _hf("LlamaForCausalLM", "LlamaConfig", hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=32, **_TEXT),
    "Qwen2 (QKV bias)": _hf("Qwen2ForCausalLM", "Qwen2Config", hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=32, **_TEXT),
    "Mistral": _hf("MistralForCausalLM", "MistralConfig", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=32, **_TEXT),
    "Gemma": _hf("GemmaForCausalLM", "GemmaConfig", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=1, head_dim=8, **_TEXT),
    "T5 (encoder-decoder)": _hf("T5ForConditionalGeneration", "T5Config", d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                num_heads=4, **_TEXT),
    "ViT": _hf("ViTForImageClassification", "ViTConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, image_size=16, patch_size=4, num_channels=3, num_labels=3),
    "ResNet-18 layout": _hf("ResNetForImageClassification", "ResNetConfig", layer_type="basic", depths=[2, 2, 2, 2],
                            hidden_sizes=[8, 16, 16, 32], embedding_size=8, num_labels=3),
    "ConvNeXt (depthwise conv)": _hf("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[8, 16, 16, 32],
                                     depths=[1, 1, 1, 1], num_labels=3, image_size=32),
    "MobileNetV2 (depthwise conv)": _hf("MobileNetV2ForImageClassification", "MobileNetV2Config",
                                        depth_multiplier=0.25, num_labels=3, image_size=32),
    "nn.TransformerEncoder": lambda: nn.TransformerEncoder(
        nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False),
    "nn.TransformerEncoderLayer": lambda: nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True),
    "ResNeXt-style (groups=2)": lambda: nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 3)),
}
"""Architectures of the coverage table. Grouped convolutions other than depthwise have no template."""
INPUTS = {"nn.TransformerEncoder": (2, 5, 32), "nn.TransformerEncoderLayer": (2, 5, 32),
          "ResNeXt-style (groups=2)": (2, 3, 12, 12)}
"""Input shapes of the non-Hugging Face entries (Hugging Face models build their own inputs)."""

_LLAMA = {"vocab_size": 32000, "max_position_embeddings": 2048}
SIZES: dict[str, Callable[[], nn.Module]] = {
    "ResNet-18": _hf("ResNetForImageClassification", "ResNetConfig", layer_type="basic", depths=[2, 2, 2, 2],
                     hidden_sizes=[64, 128, 256, 512], embedding_size=64, num_labels=1000),
    "ViT-B/16": _hf("ViTForImageClassification", "ViTConfig", num_labels=1000),
    "BERT-base": _hf("BertForSequenceClassification", "BertConfig", num_labels=2),
    "GPT-2 small": _hf("GPT2LMHeadModel", "GPT2Config"),
    "Llama 0.3B": _hf("LlamaForCausalLM", "LlamaConfig", hidden_size=1024, intermediate_size=2816,
                      num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=4, **_LLAMA),
    "Llama 1.1B": _hf("LlamaForCausalLM", "LlamaConfig", hidden_size=2048, intermediate_size=5632,
                      num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, **_LLAMA),
}
QUICK_SIZES = ("ResNet-18", "GPT-2 small")


# ---------------------------------------------------------------------------------------- measurements
def _call(model: nn.Module, inputs: Any) -> torch.Tensor:
    out = model(*inputs) if isinstance(inputs, tuple) else model(**inputs)
    return out if isinstance(out, torch.Tensor) else out[0]


def coverage_row(name: str) -> dict[str, Any]:
    from encoders import NeuralGraph, Role
    from encoders.exporting import example_inputs_for, is_hugging_face
    from encoders.symmetry import permute_edges, permute_nodes, random_hidden_permutation

    torch.manual_seed(0)
    model = COVERAGE[name]().double().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            is_scale = p.dim() == 1 and pname.endswith("weight") and ("norm" in pname or "ln" in pname)
            p.normal_(1.0 if is_scale else 0.0, 0.3)
    hugging_face = is_hugging_face(model)
    inputs = example_inputs_for(model) if hugging_face else (torch.randn(INPUTS[name], dtype=torch.float64),)
    row: dict[str, Any] = {"model": name, "parameters": sum(p.numel() for p in model.parameters())}
    start = time.perf_counter()
    try:
        graph = NeuralGraph.from_module(model, None if hugging_face else inputs)
    except ValueError as err:
        row["seconds"] = round(time.perf_counter() - start, 3)
        graph = NeuralGraph.from_parameters(model.named_parameters())
        row["graph"] = "chained"
        row["reason"] = str(err).split("torch.export: ")[-1][:160]  # the last tracer's reason
    else:
        row["seconds"] = round(time.perf_counter() - start, 3)
        row["graph"] = "torch.export" if hugging_face or not _fx_traces(model) else "torch.fx"
    row.update(nodes=graph.num_nodes, edges=graph.num_edges,
               groups=int(graph.node_group[graph.node_group >= 0].unique().numel()),
               attention_heads=int(graph.node_unit[graph.node_role == Role.ATTENTION].unique().numel()),
               fixed_attention=int(((graph.node_role == Role.ATTENTION) & (graph.node_group < 0)).sum()))
    sigma = random_hidden_permutation(graph, torch.Generator().manual_seed(0))
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(graph.to_state_dict(permute_nodes(graph.x, sigma), permute_edges(graph, graph.edge_attr,
                                                                                                sigma)), strict=False)
    with torch.no_grad():
        reference = _call(model, inputs)
        row["symmetry_error"] = float((_call(permuted, inputs) - reference).abs().max() / reference.abs().max())
    return row


def _fx_traces(model: nn.Module) -> bool:
    from encoders.tracing import trace_module

    try:
        trace_module(model)
    except ValueError:
        return False
    return True


def _rss_mb() -> float:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> None:
    """Start the process's peak-memory mark (VmHWM) afresh from its current use (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def size_row(name: str, what: str) -> dict[str, Any]:
    """Build, in this process, the optimizer's context (``what="context"``: the graph described
    and read without storing its edges) or the full ``NeuralGraph`` (``"graph"``) of
    ``SIZES[name]`` in bfloat16."""
    from encoders import NeuralGraph
    from l2o import NeuralGraphRule

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = SIZES[name]().to(torch.bfloat16).eval()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    base = _rss_mb()
    _reset_peak()
    start = time.perf_counter()
    try:
        if what == "context":
            NeuralGraphRule().build_context(params, model)
            size = {}
        else:
            graph = NeuralGraph.from_module(model)
            size = {"nodes": graph.num_nodes, "edges": graph.num_edges}
    except RuntimeError as err:  # e.g. an allocation larger than the machine
        size = re.search(r"allocate (\d+) bytes", str(err))
        reason = f"one {int(size.group(1)) / 2**30:.0f} GB allocation failed" if size else str(err)[:100]
        return {"model": name, "parameters": n, "what": what, "skipped": reason}
    seconds = time.perf_counter() - start
    return {"model": name, "parameters": n, "what": what, **size, "seconds": round(seconds, 2),
            "model_mb": round(sum(p.numel() * p.element_size() for p in params) / 2**20),
            "extra_bytes_per_param": round(max(_peak_mb() - base, 0) * 2**20 / n, 1)}


def _memory_mb() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return info.get("MemAvailable", info["MemTotal"]) / 1024


# ---------------------------------------------------------------------------------------- report
def _markdown(coverage: list[dict], sizes: list[dict], threads: int) -> str:
    lines = ["How `NeuralGraph.from_module` (and so `NeuralGraphOpt(model.parameters(), model=model)`) sees the "
             "models people train. *Symmetry error*: largest output change, relative, after applying a random "
             "symmetry of the graph to the parameters (hidden neurons, and neurons within attention heads); "
             "float64 models, so values near 1e-16 are exact and values near 1e-7 come from models that compute "
             "in float32 inside (Llama-family norms and rotary tables). *Fixed attention*: query/key neurons "
             "no symmetry moves because rotary embeddings mix them.", "",
             "| model | params | graph | nodes | edges | groups | heads | fixed attention | build s | "
             "symmetry error |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in coverage:
        graph = r["graph"] if r["graph"] != "chained" else f"chained: {r['reason']}"
        lines.append(f"| {r['model']} | {r['parameters']:,} | {graph} | {r['nodes']:,} | {r['edges']:,} | "
                     f"{r['groups']} | {r['attention_heads']} | {r['fixed_attention']} | {r['seconds']:.2f} | "
                     f"{r['symmetry_error']:.1e} |")
    lines += ["", f"Full-size models (bfloat16), each measurement in a fresh process, {threads} thread(s). "
              "*Optimizer context*: what `NeuralGraphOpt(model.parameters(), model=model)` builds (the graph traced "
              "and read without storing its edges). *NeuralGraph*: the full graph the encoders read (every edge "
              "stored). *Extra bytes/param*: the process's peak memory above what it held with the model built, "
              "per parameter. Targets: GPT-2 small under 10 s, a 1B-parameter model under 60 s, memory linear in "
              "parameters. A NeuralGraph pads every edge's features to the largest kernel in the model (ResNet-18's "
              "7x7 stem: 49 slots per edge; ViT-B/16's 16x16 patch embedding: 256), which is where its memory goes on "
              "those models; the optimizer's context stores no edges and is unaffected.", "",
              "| model | params | model MB | context s | context bytes/param | NeuralGraph s | NeuralGraph "
              "bytes/param | edges |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(r["model"] for r in sizes):
        rows = {r["what"]: r for r in sizes if r["model"] == name}
        cells = []
        for what in ("context", "graph"):
            r = rows.get(what)
            if r is None or "skipped" in r:
                cells += [f"skipped: {r['skipped']}" if r else "", ""]
            else:
                cells += [f"{r['seconds']}", f"{r['extra_bytes_per_param']}"]
        first = next(iter(rows.values()))
        edges = rows.get("graph", {}).get("edges")
        lines.append(f"| {name} | {first['parameters']:,} | {first.get('model_mb', '')} | {' | '.join(cells)} | "
                     f"{f'{edges:,}' if edges else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"coverage, and only {QUICK_SIZES} in the size table")
    parser.add_argument("--out", type=Path, default=Path("results/graph_build"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.simplefilter("ignore")
    coverage = []
    for name in COVERAGE:
        coverage.append(coverage_row(name))
        print(coverage[-1], flush=True)
    sizes: list[dict[str, Any]] = []
    per_param = {"context": 0.0, "graph": 0.0}  # the last measured, to skip what would not fit
    for name in (QUICK_SIZES if args.quick else SIZES):
        model = SIZES[name]()  # parameter count only; each measurement builds its own
        n = sum(p.numel() for p in model.parameters())
        del model
        for what in ("context", "graph"):
            estimate_gb = n * (4 + per_param[what]) / 2**30
            if per_param[what] and estimate_gb > 0.8 * _memory_mb() / 1024:
                sizes.append({"model": name, "parameters": n, "what": what,
                              "skipped": f"needs ~{estimate_gb:.0f} GB at {per_param[what]:.0f} B/param"})
            else:
                try:
                    sizes.append(run_isolated(size_row, name, what, threads=args.threads))
                except RuntimeError as err:  # the process was killed, e.g. by the out-of-memory killer
                    sizes.append({"model": name, "parameters": n, "what": what, "skipped": f"failed: {err}"[:100]})
                per_param[what] = sizes[-1].get("extra_bytes_per_param", per_param[what])
            print(sizes[-1], flush=True)
    write_results(args.out, "graph_build", {"coverage": coverage, "sizes": sizes, "threads": args.threads},
                  _markdown(coverage, sizes, args.threads))


if __name__ == "__main__":
    main()
