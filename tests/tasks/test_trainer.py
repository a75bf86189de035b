"""The shared trainer: results, checkpoints that resume exactly, refusal of foreign checkpoints, the CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from encoders.tasks import FitConfig, fit
from encoders.tasks.cli import add_parser
from encoders.tasks.trainer import CHECKPOINT

CONFIG = {"hidden": 8, "layers": 1, "batch_size": 16}


def test_resume_equals_uninterrupted(tasks: dict, tmp_path) -> None:
    task = tasks["generalization"]
    full = fit(task, "deepsets", config=FitConfig(epochs=3, patience=99, **CONFIG), progress=False)
    fit(task, "deepsets", config=FitConfig(epochs=3, patience=99, **CONFIG), out=tmp_path, progress=False)
    # a second call finds the finished checkpoint and only re-scores
    resumed = fit(task, "deepsets", config=FitConfig(epochs=3, patience=99, **CONFIG), out=tmp_path, progress=False)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]  # val tau may be NaN
    assert json.loads((tmp_path / "results.json").read_text())["test_kendall_tau"] == pytest.approx(
        full["test_kendall_tau"], nan_ok=True)


def test_interrupted_run_resumes(tasks: dict, tmp_path) -> None:
    task = tasks["inr-classify"]
    full = fit(task, "mlp", config=FitConfig(epochs=3, patience=99, **CONFIG), progress=False)
    first = fit(task, "mlp", config=FitConfig(epochs=2, patience=99, **CONFIG), out=tmp_path, progress=False)
    resumed = fit(task, "mlp", config=FitConfig(epochs=3, patience=99, **CONFIG), out=tmp_path, progress=False)
    assert first["history"] == full["history"][:2]
    assert resumed["history"] == full["history"]
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert not list(tmp_path.glob("*.tmp"))


def test_dropout_run_resumes_exactly(tasks: dict, tmp_path) -> None:
    """The CPU random state travels in the checkpoint (as a byte tensor), so dropout masks repeat;
    so does the warm-up schedule, interrupted half-way."""
    task = tasks["inr-classify"]
    settings = {**CONFIG, "dropout": 0.5, "warmup": 5}
    full = fit(task, "ng-gnn", config=FitConfig(epochs=3, patience=99, **settings), progress=False)
    fit(task, "ng-gnn", config=FitConfig(epochs=1, patience=99, **settings), out=tmp_path, progress=False)
    resumed = fit(task, "ng-gnn", config=FitConfig(epochs=3, patience=99, **settings), out=tmp_path, progress=False)
    assert resumed["history"] == full["history"]


def test_warmup_starts_from_a_small_learning_rate(tasks: dict) -> None:
    task = tasks["inr-classify"]
    frozen = fit(task, "ng-gnn", config=FitConfig(epochs=2, patience=99, warmup=10**9, **CONFIG), progress=False)
    moving = fit(task, "ng-gnn", config=FitConfig(epochs=2, patience=99, **CONFIG), progress=False)
    assert frozen["history"][0]["loss"] == pytest.approx(frozen["history"][1]["loss"], rel=1e-5)
    assert moving["history"][1]["loss"] != pytest.approx(moving["history"][0]["loss"], rel=1e-3)


def test_bf16_trains_near_float32_and_keeps_its_checkpoints_apart(tasks: dict, tmp_path) -> None:
    task = tasks["inr-classify"]
    runs = {bf16: fit(task, "ng-gnn", config=FitConfig(epochs=2, patience=99, bf16=bf16, **CONFIG),
                      out=tmp_path / str(bf16), progress=False) for bf16 in (False, True)}
    low, full = ([h["loss"] for h in runs[b]["history"]] for b in (True, False))
    assert low != full and low == pytest.approx(full, rel=0.05)
    assert 0 <= runs[True]["test_accuracy"] <= 1
    with pytest.raises(ValueError, match="other settings"):  # bf16 changes the numbers: no silent mixing
        fit(task, "ng-gnn", config=FitConfig(epochs=3, patience=99, bf16=True, **CONFIG), out=tmp_path / "False",
            progress=False)


class Payload:
    """Stands for any pickled object: loading it would call code named in the file."""


def test_checkpoint_loads_without_pickles(tasks: dict, tmp_path) -> None:
    task = tasks["inr-classify"]
    fit(task, "mlp", config=FitConfig(epochs=1, **CONFIG), out=tmp_path, progress=False)
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)  # plain tensors and containers only
    assert isinstance(saved["rng"], torch.Tensor)
    saved["state"]["payload"] = Payload()
    torch.save(saved, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match=f"refusing to resume from .*{CHECKPOINT}.*pickled objects"):
        fit(task, "mlp", config=FitConfig(epochs=2, **CONFIG), out=tmp_path, progress=False)
    fit(task, "mlp", config=FitConfig(epochs=1, **CONFIG), out=tmp_path, resume=False, progress=False)


def test_foreign_checkpoint_refused(tasks: dict, tmp_path) -> None:
    task = tasks["inr-classify"]
    fit(task, "mlp", config=FitConfig(epochs=1, **CONFIG), out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        fit(task, "mlp", config=FitConfig(epochs=1, lr=0.1, **CONFIG), out=tmp_path, progress=False)
    fit(task, "mlp", config=FitConfig(epochs=1, lr=0.1, **CONFIG), out=tmp_path, resume=False, progress=False)


def test_early_stopping(tasks: dict) -> None:
    result = fit(tasks["inr-classify"], "mlp", config=FitConfig(epochs=50, patience=2, lr=0.0, **CONFIG),
                 progress=False)
    assert result["epochs"] == 3 and result["best_epoch"] == 1


def test_cli(inr_zoo_dir, tmp_path) -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fit", "inr-classify", "--zoo", str(inr_zoo_dir), "--encoder", "ng-gnn",
                              "--epochs", "1", "--hidden", "8", "--layers", "1", "--out", str(tmp_path),
                              "--no-progress"])
    assert args.handler(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task"] == "inr-classify" and results["encoder"] == "ng-gnn" and results["epochs"] == 1

