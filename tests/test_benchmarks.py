"""Smoke tests of the benchmark code paths at tiny sizes (the figures come from full runs)."""

import json
import math
import warnings

import pytest
import torch
from torch import nn

from benchmarks import graph_build, head_cost, l2o_quality, meta_throughput, recipe_spread, step_overhead, weight_space
from benchmarks.__main__ import available
from benchmarks.common import free_cores, machine_info


@pytest.mark.parametrize("optimizer", step_overhead.OPTIMIZERS)
def test_step_overhead_measures_every_optimizer(optimizer):
    def tiny():
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
        import torch

        return model, torch.randn(4, 6)

    result = step_overhead.measure(tiny, optimizer, repeats=1)
    assert result["params"] == 6 * 5 + 5 + 5 * 3 + 3
    assert result["step_s"] > 0 and result["forward_backward_s"] > 0
    expected_state = {"Adam": 8, "AdamW": 8, "Muon": 4}.get(optimizer, 16)  # Muon: one momentum on matrices
    assert result["state_bytes_per_param"] >= expected_state


def test_head_cost_times_every_head_against_adam():
    rows = head_cost.main(["--quick", "--threads", "1"])
    assert [r["head"] for r in rows] == ["Adam step (whole)"] + [f"{h} x {a}" for a, h in head_cost.HEADS]
    assert all(r["s"] > 0 for r in rows) and "/ Adam's step" in head_cost.markdown(rows)


def test_meta_throughput_times_both_paths(tmp_path):
    rows = meta_throughput.main(["--quick", "--rules", "ff", "--out", str(tmp_path)])
    assert [r["instances"] for r in rows] == [1, 8]
    assert all(r["per_instance_steps_per_s"] > 0 and r["vectorized_speedup"] > 0 for r in rows)
    assert (tmp_path / "meta_throughput.md").read_text().count("| ff | forward |") == 2


def test_l2o_quality_run_and_summary():
    runs = [l2o_quality.run("cnn-digits", spec, 0, 40, None)
            for spec in (("NeuralGraphOpt", 1.0), ("FF", 1.0), ("Adam", 1e-3), ("Adam", 1e-2))]
    assert all(len(r["train"]) == 40 // l2o_quality.SMOOTH and len(r["test"]) == 10 for r in runs)
    rows, summary = l2o_quality.summarize(runs, ["cnn-digits"])
    assert [r["optimizer"] for r in rows] == ["NeuralGraphOpt", "FF", "Adam(1e-3)", "Adam tuned"]
    tuned = rows[-1]
    assert tuned["lr"] in (1e-3, 1e-2) and tuned["train_vs_tuned_adam"] == tuned["test_vs_tuned_adam"] == 1
    assert summary[0]["optimizer"] == "NeuralGraphOpt" and summary[0]["beats_ff"] in (0, 1)
    assert summary[0]["beats_tuned_muon"] is None  # Muon did not run
    assert "geo. mean" in l2o_quality.table(rows, summary)


def test_l2o_quality_cache_is_refilled_from_a_results_file(tmp_path, monkeypatch):
    """The baseline runs of a results file go to the cache; run_jobs then reads them instead of
    training (a learned optimizer's run is never taken from there)."""
    adam = {"task": "cnn-digits", "optimizer": "Adam", "lr": 0.01, "seed": 0, "steps": 40, "train": [1.0],
            "test": [2.0]}
    learned = dict(adam, optimizer="NeuralGraphOpt", lr=1.0)
    results = tmp_path / "l2o_quality.json"
    results.write_text(json.dumps({"runs": [adam, learned]}))
    assert l2o_quality.fill_cache(results, tmp_path / "cache") == 1
    def no_training(jobs: list, *args: object) -> list:
        assert not jobs, f"trained {jobs} instead of reading the cache"
        return []

    monkeypatch.setattr(l2o_quality, "_execute", no_training)
    done = l2o_quality.run_jobs([("cnn-digits", ("Adam", 0.01), 0)], 40, None, None, 1, tmp_path / "cache", "test")
    assert list(done.values()) == [adam]


def _record(task: str, kind: str, lr: float, seed: int, train: float, test: float) -> dict:
    return {"task": task, "optimizer": kind, "lr": lr, "seed": seed, "train": [9.0, train], "test": [9.0, test]}


def test_l2o_quality_summary_arithmetic():
    """Hand-made finals on two tasks, two seeds: tuning on seed 0, ratios to tuned Adam, a diverged run."""
    inf = math.inf
    runs = [
        # task a: Adam tuned = 1e-2 (train 1.0, 3.0: mean 2.0; test 1.0); Muon's 1e-2 diverged, so 1e-3
        *[_record("a", "Adam", lr, 0, train, 1.0) for lr, train in ((1e-3, 2.0), (1e-2, 1.0))],
        _record("a", "Adam", 1e-2, 1, 3.0, 1.0), _record("a", "Adam", 1e-3, 1, 4.0, 1.0),
        *[_record("a", "NeuralGraphOpt", 1.0, seed, 1.0, 1.04) for seed in (0, 1)],
        *[_record("a", "FF", 1.0, seed, 0.5, 1.0) for seed in (0, 1)],
        _record("a", "Muon", 1e-3, 0, 3.0, 1.0), _record("a", "Muon", 1e-2, 0, inf, inf),
        _record("a", "Muon", 1e-3, 1, 3.0, 1.0),
        # task b: Adam tuned = Adam(1e-3) (train 1.0, test 2.0); NeuralGraphOpt diverged on seed 1
        *[_record("b", "Adam", lr, 0, train, 2.0) for lr, train in ((1e-3, 1.0), (1e-2, 2.0))],
        _record("b", "Adam", 1e-3, 1, 1.0, 2.0),
        _record("b", "NeuralGraphOpt", 1.0, 0, 8.0, 2.0), _record("b", "NeuralGraphOpt", 1.0, 1, inf, 2.0),
        *[_record("b", "FF", 1.0, seed, 2.0, 2.0) for seed in (0, 1)],
        *[_record("b", "Muon", lr, 0, train, 2.0) for lr, train in ((1e-3, 4.0), (1e-2, 5.0))],
        _record("b", "Muon", 1e-3, 1, 4.0, 2.0),
    ]
    rows, summary = l2o_quality.summarize(runs, ["a", "b"])
    row = {(r["task"], r["optimizer"]): r for r in rows}
    assert row["a", "Adam tuned"]["lr"] == 1e-2 and row["a", "Muon tuned"]["lr"] == 1e-3
    assert row["a", "Adam(1e-3)"]["train_vs_tuned_adam"] == 1.5 and row["a", "Adam tuned"]["final_train_std"] == 1.0
    assert row["b", "NeuralGraphOpt"]["final_train"] == inf and row["b", "NeuralGraphOpt"]["train_vs_tuned_adam"] == inf
    assert row["a", "NeuralGraphOpt"]["steps_to_tuned_adam_final"] == 2 * l2o_quality.SMOOTH
    by = {e["optimizer"]: e for e in summary}
    ours = by["NeuralGraphOpt"]
    assert ours["train_geomean"] == inf and ours["test_geomean"] == pytest.approx(1.04**0.5)
    assert (ours["train_at_most_tuned_adam"], ours["test_within_5pct"]) == (1, 2)
    assert (ours["beats_ff"], ours["beats_tuned_muon"], ours["beats_ff_of"]) == (0, 1, 2)
    assert by["Adam(1e-3)"]["train_geomean"] == pytest.approx(1.5**0.5)
    assert by["Adam tuned"]["train_geomean"] == 1 and by["Adam tuned"]["train_at_most_tuned_adam"] == 2
    assert by["Muon tuned"]["train_geomean"] == pytest.approx((1.5 * 4.0) ** 0.5)
    assert "beats_ff" not in by["FF"]
    markdown = l2o_quality.table(rows, summary)
    assert "| NeuralGraphOpt | 2 | inf | 1.02 | 1 | 2 | 0/2 | 1/2 |" in markdown and "inf (diverged)" in markdown


def test_l2o_quality_reruns_only_uncached_runs(tmp_path, monkeypatch):
    calls = []
    real = l2o_quality.run

    def counted(task, spec, seed, *args):
        calls.append((task, spec, seed))
        return real(task, spec, seed, *args)

    monkeypatch.setattr(l2o_quality, "run", counted)
    argv = ["--quick", "--tasks", "regression", "--optimizers", "FF", "--steps", "20", "--workers", "1",
            "--out", str(tmp_path / "out")]
    first = l2o_quality.main(argv)
    assert sorted(calls) == sorted([("regression", ("FF", 1.0), 0)]
                                   + [("regression", ("Adam", lr), 0) for lr in l2o_quality.QUICK_GRID])
    assert len(list((tmp_path / "out" / "runs_cache").glob("regression_Adam_*.json"))) == 3
    calls.clear()
    second = l2o_quality.main(argv)
    assert calls == [("regression", ("FF", 1.0), 0)]  # the learned rule reruns, the baselines do not
    assert second["runs"] == first["runs"]


def test_muon_trains_only_hidden_weight_matrices():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = l2o_quality.make_optimizer(("Muon", 1e-2), model, None)
    assert [p for group in opt.muon.param_groups for p in group["params"]] == [model[3].weight]
    assert opt.muon.defaults["adjust_lr_fn"] == "match_rms_adamw"
    others = {id(p) for group in opt.adamw.param_groups for p in group["params"]}
    assert others == {id(p) for p in model.parameters()} - {id(model[3].weight)}
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(5, 4)).square().mean().backward()
    opt.step()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    transformer = l2o_quality.hidden_matrices(l2o_quality.make_task("transformer", 0).model)
    assert "layers.0.self_attn.in_proj_weight" in transformer and "layers.1.linear2.weight" in transformer
    assert not any(name.startswith(("embed", "pos", "head")) for name in transformer)
    cnn = l2o_quality.make_optimizer(("Muon", 1e-2), l2o_quality.make_task("resnet-cnn", 0).model, None)
    assert cnn.muon is None  # conv kernels are 4-D, the classifier is the output layer: AdamW only


def test_l2o_quality_tasks_trace_without_falling_back_to_a_chained_graph():
    from l2o import NeuralGraphOpt

    for name in l2o_quality.TASKS:
        task = l2o_quality.make_task(name, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            NeuralGraphOpt(task.model.parameters(), model=task.model, example_inputs=task.example_inputs(),
                           compile=False)
        assert math.isfinite(task.loss(task.init_params(), task.batch(0)).item()), name
    with pytest.raises(ValueError, match="unknown task 'mlp'"):
        l2o_quality.make_task("mlp", 0)
    with pytest.raises(ValueError, match="unknown optimizer 'SGD'"):
        l2o_quality.make_optimizer(("SGD", 0.1), nn.Linear(2, 2), None)


def test_l2o_quality_graph_ablation_trains_on_the_chained_graph():
    from encoders import Role

    task = l2o_quality.make_task("transformer", 0)
    traced = l2o_quality.make_optimizer(("NeuralGraphOpt reference", 1.0), task.model, None, None,
                                        task.example_inputs())
    chained = l2o_quality.make_optimizer((l2o_quality.CHAINED, 1.0), task.model, None)
    assert (traced.context.node_role == Role.ATTENTION).any()  # exact: traced with torch.export
    assert not (chained.context.node_role == Role.ATTENTION).any()


def test_graph_build_coverage_rows_tell_traced_from_chained():
    llama = graph_build.coverage_row("Llama (GQA, RoPE)")
    assert llama["graph"] == "torch.export" and llama["symmetry_error"] < 1e-5 and llama["fixed_attention"] > 0
    grouped = graph_build.coverage_row("ResNeXt-style (groups=2)")
    assert grouped["graph"] == "chained" and "groups=2" in grouped["reason"] and grouped["symmetry_error"] > 1e-3
    table = graph_build._markdown([llama, grouped], [], threads=1)
    assert "| Llama (GQA, RoPE) |" in table and "chained: " in table and "groups=2" in table


def test_steps_to_reach():
    assert l2o_quality.steps_to_reach([3.0, 2.0, 1.0], 2.5) == 2 * l2o_quality.SMOOTH
    assert l2o_quality.steps_to_reach([3.0, 2.0], 0.5) == math.inf


def test_suite_lists_its_parts_and_describes_the_machine():
    assert {"step_overhead", "l2o_quality", "encoders_throughput"} <= set(available())
    info = machine_info()
    assert info["cores"] >= 1 and "torch" in info and 1 <= free_cores() <= info["cores"]


def test_weight_space_sizes_run_their_tasks_only():
    full = weight_space.runs(weight_space.SIZES["full"])
    assert {task for task, _, _ in full} == set(weight_space.ALL_TASKS)
    assert ("inr-classify", "ng-gnn", 16) in full and ("inr-edit", "stats", 0) not in full
    classify = weight_space.runs(weight_space.SIZES["classify"])
    assert classify == [("inr-classify", encoder, 0) for encoder in weight_space.ENCODERS]


def test_l2o_quality_evaluates_the_rule_it_is_given():
    from l2o.optim import DEFAULT_RULE

    default = l2o_quality.run("cnn-digits", ("NeuralGraphOpt", 1.0), 0, 20, None)
    named = l2o_quality.run("cnn-digits", ("NeuralGraphOpt", 1.0), 0, 20, None, rule=DEFAULT_RULE)
    other = l2o_quality.run("cnn-digits", ("NeuralGraphOpt", 1.0), 0, 20, None, rule="ff-v3")
    assert default["train"] == named["train"]
    assert other["train"] != default["train"]


def _final(label: str, task: str, train: float, test: float) -> dict:
    return {"label": label, "task": task, "train": [9.0, train], "test": [9.0, test]}


def test_recipe_spread_summary_compares_the_shipped_rule_with_the_median_rerun():
    runs = [_final(label, task, loss, 1.0) for label, losses in
            {"shipped": (1.0, 4.0), "seed 0": (2.0, 1.0), "seed 1": (4.0, 3.0), "seed 2": (3.0, 2.0),
             "Adam(1e-3)": (3.5, 2.5)}.items() for task, loss in zip(("a", "b"), losses)]
    rows, spread = recipe_spread.summarize(runs, "shipped")
    assert spread["a"] == {"median": 3.0, "min": 2.0, "max": 4.0, "shipped_over_median": 1 / 3}
    assert spread["b"]["shipped_over_median"] == 2.0
    beats = {r["rule"]: r.get("beats Adam(1e-3)") for r in rows}
    assert beats == {"shipped": 1, "seed 0": 2, "seed 1": 0, "seed 2": 2, "Adam(1e-3)": None}
    assert "| a | 3 | 2 | 4 | 0.33 |" in recipe_spread.table(rows, spread)


def test_recipe_spread_quick_trains_each_seed_resumably_and_evaluates_every_rule(tmp_path):
    args = ["--quick", "--workers", "1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    record = recipe_spread.main(args)
    assert [r["rule"] for r in record["rows"]] == ["shipped", "seed 0", "seed 1", "Adam(1e-3)"]
    for seed in (0, 1):
        assert (tmp_path / "runs" / f"seed{seed}" / "rule" / "model.safetensors").exists()
    trained = {r["label"]: r["train"] for r in record["runs"]}
    assert trained["seed 0"] != trained["seed 1"] != trained["shipped"]
    assert (tmp_path / "out" / "recipe_spread.png").exists() and (tmp_path / "out" / "recipe_spread.md").exists()


def test_fused_targets_are_judged_from_the_rows():
    def row(model, params, vs_adam, transient=1.0):
        return {"model": model, "optimizer": step_overhead.FUSED, "params": params, "vs_adam": vs_adam,
                "transient_bytes_per_param": transient, "vs_reference": 0.3, "first_step_s": 20.0,
                "step_s": 0.01, "forward_backward_s": 0.02}

    cpu = step_overhead.fused_targets([row("MLP 784-2048-2048-10", 5.8e6, 3.9), row("CNN 32-64-64", 6e4, 8.5),
                                       row("MLP 784-256-256-10", 2.7e5, 7.0, transient=30.0)], [], "cpu")
    lines = cpu.splitlines()[2:]
    assert "(<= 4) met" in lines[0] and "(<= 8) MISSED" in lines[1] and "(<= 8) met" in lines[2]
    assert "30.0 met" in lines[2]  # transient is judged above 1M parameters only
    gpu = step_overhead.fused_targets([row("ViT-B/16 bf16", 8.6e7, 12.0)], [], "cuda")
    assert "0.50x met" in gpu and "12.0x MISSED" in gpu


def test_rule_validation_summary():
    from benchmarks import rule_validation

    runs = [{"index": i, "task": f"t{i}", "rule": rule, "final": final}
            for i, (a, b) in enumerate([(1.0, 0.5), (2.0, 4.0)]) for rule, final in (("a", a), ("b", b))]
    summary, table = rule_validation.summarize(runs, ["a", "b"])
    assert summary["a"] == {"geomean_ratio": 1.0, "wins": 0}
    assert summary["b"]["geomean_ratio"] == pytest.approx(1.0) and summary["b"]["wins"] == 1
    assert "| t1 | 2 | 4 |" in table


def test_rule_validation_trains_a_held_out_task():
    from benchmarks import rule_validation

    run = rule_validation.run("l2o/meta/configs/adaptive_neural_graph.yaml", 0, "neural-graph-adaptive", 60)
    assert run["index"] == 0 and run["final"] > 0 and run["task"]
