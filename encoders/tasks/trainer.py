"""One trainer for every task and model: ``fit(task, encoder=..., zoo=...)``.

Adam with gradient clipping, one evaluation of the validation split per epoch, early stopping
after ``patience`` epochs without improvement, the best validation state scored on the test split.
With an ``out`` folder, training writes ``checkpoint.pt`` after every epoch (atomically: a
temporary file renamed into place) and resumes from it, and the results go to ``results.json``.
A checkpoint holds only tensors and plain data (dicts, lists, numbers, strings; the CPU random
state as a byte tensor) and is read with ``torch.load(weights_only=True)``: a checkpoint in a
shared folder cannot run code, and one that holds any other pickled object is refused.
The ``stats`` baseline has no epochs: it fits gradient boosting once.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from encoders.models import NeuralGraphEncoder
from encoders.tasks.models import build_model
from encoders.tasks.stats import fit_stats_baseline
from encoders.tasks.tasks import InrEditing, WeightTask, make_task
from encoders.zoo.zoo import Zoo, load_zoo

__all__ = ["FitConfig", "evaluate", "fit"]

CHECKPOINT, RESULTS = "checkpoint.pt", "results.json"


@dataclass
class FitConfig:
    """Training settings. ``hidden``/``layers``: model size; ``probes``: probe features (INR tasks,
    ng-gnn/ng-t); ``patience``: epochs without validation improvement before stopping;
    ``augment``: the task's training augmentations (``inr-classify``: see
    :mod:`encoders.tasks.augment`; a task without any raises ``ValueError``); ``warmup``: steps
    of linear learning-rate warm-up (the neural-graphs recipe uses 1000).

    How to run, not what is learned (a run may resume with other values): ``sparse`` keeps NG-GNN
    and NG-T on the sparse PyG path even for batches of one architecture (the dense path gives the
    same values, faster; see :mod:`encoders.dense`); ``compile`` puts the dense path through
    ``torch.compile`` (about a minute to compile, then roughly twice as fast on CPU).

    ``bf16`` runs forward passes (training and evaluation) under ``torch.autocast`` in bfloat16:
    mixed precision, with parameters, gradients, optimizer state and losses in float32. It changes
    the numbers (so, unlike ``sparse`` and ``compile``, a run resumes only with the same value) and
    pays off where matrix products are the cost: NG-GNN and NG-T spend most of their time in
    per-edge products, which bfloat16 runs about 2.5x faster on CPUs with AVX512-BF16 (and on GPUs).
    """

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    patience: int = 10
    hidden: int = 32
    layers: int = 4
    probes: int = 0
    dropout: float = 0.0
    seed: int = 0
    augment: bool = False
    warmup: int = 0
    sparse: bool = False
    compile: bool = False
    bf16: bool = False


def _precision(model: nn.Module, bf16: bool) -> torch.autocast:
    """The autocast context of ``FitConfig.bf16`` on ``model``'s device."""
    device = next(model.parameters(), torch.empty(0)).device.type
    return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def evaluate(model: nn.Module, task: WeightTask, split: str, batch_size: int = 64, bf16: bool = False) -> float:
    """The task's metric of ``model`` on ``split`` (eval mode; ``bf16``: see :class:`FitConfig`)."""
    model.eval()
    with _precision(model, bf16):
        preds = [task.predictions(model(b, **task.model_inputs(b)).float(), b)
                 for b in task.splits[split].batches(batch_size)]
    return task.score(torch.cat(preds), split)


def _better(task: WeightTask, new: float, best: float | None) -> bool:
    if best is None or best != best:  # NaN never blocks progress
        return True
    return new > best if task.higher_is_better else new < best


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, Any]:
    """A checkpoint read without unpickling code; a file holding other pickled objects is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"refusing to resume from {path}: it holds pickled objects other than tensors and "
                         "plain data, and loading them could run code; the trainer writes only tensors, dicts, "
                         "lists, numbers and strings (delete the file or use resume=False to start over)\n"
                         f"torch said: {error}") from error


def _results(task: WeightTask, encoder: str, config: FitConfig, scores: dict[str, float],
             extra: dict[str, Any]) -> dict[str, Any]:
    out = {"task": task.name, "encoder": encoder, "metric": task.metric, "config": asdict(config),
           "sizes": {s: len(d) for s, d in task.splits.items()}, **{f"{s}_{task.metric}": v for s, v in scores.items()},
           **extra}
    if isinstance(task, InrEditing):
        out["test_unedited_pixel_mse"] = task.unedited_mse("test")
    return out


def _fit_stats(task: WeightTask, config: FitConfig) -> dict[str, Any]:
    if task.edits:
        raise ValueError("the stats baseline predicts one value per network; it cannot edit weights")
    start = time.perf_counter()
    preds = fit_stats_baseline(task.train, {s: task.splits[s] for s in ("val", "test")},
                               classify=task.name == "inr-classify", seed=config.seed)
    scores = {s: task.score(p, s) for s, p in preds.items()}
    return _results(task, "stats", config, scores, {"seconds": time.perf_counter() - start})


def fit(task: str | WeightTask, encoder: str = "ng-gnn", zoo: str | os.PathLike | Zoo | None = None, *,
        config: FitConfig | None = None, out: str | os.PathLike | None = None, resume: bool = True,
        progress: bool = True) -> dict[str, Any]:
    """Train ``encoder`` (``ng-gnn``, ``ng-t``, ``deepsets``, ``mlp`` or ``stats``) on ``task``.

    ``task``: a :class:`WeightTask` or a task name with ``zoo`` (a folder or a loaded zoo).
    ``out``: folder for ``checkpoint.pt`` and ``results.json`` (resumes from the checkpoint unless
    ``resume=False``; a checkpoint from other settings is refused, but ``epochs`` and ``patience``
    may change, e.g. to extend a finished run). Returns the results: best
    validation and test metric, epochs run, seconds, parameter count.
    """
    config = config or FitConfig()
    if isinstance(task, str):
        if zoo is None:
            raise ValueError("pass the zoo (folder or Zoo) with a task name")
        task = make_task(task, zoo if isinstance(zoo, Zoo) else load_zoo(zoo))
    if config.augment and (encoder == "stats" or task.augmentation() is None):
        raise ValueError(f"augment=True: task {task.name!r} with encoder {encoder!r} has no training augmentations "
                         "(inr-classify with a trained encoder has)")
    folder = Path(out) if out is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    if encoder == "stats":
        results = _fit_stats(task, config)
    else:
        results = _train(task, encoder, config, folder, resume, progress)
    if folder is not None:
        (folder / RESULTS).write_text(json.dumps(results, indent=2))
    return results


def _train(task: WeightTask, encoder: str, config: FitConfig, folder: Path | None, resume: bool,
           progress: bool) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    model = build_model(encoder, task, hidden=config.hidden, layers=config.layers, probes=config.probes,
                        dropout=config.dropout, dense=not config.sparse)
    if config.compile and isinstance(getattr(model, "encoder", None), NeuralGraphEncoder):
        model.encoder.compile_dense()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (config.warmup + 1)))
    # epochs and patience may change between runs (a finished run can be extended), and so may how it runs
    settings = {"task": task.name, "encoder": encoder, "config": {
        k: v for k, v in asdict(config).items() if k not in ("epochs", "patience", "sparse", "compile")}}
    for name in ("augment", "warmup", "bf16"):  # checkpoints from before these options existed stay resumable
        if not settings["config"][name]:
            settings["config"].pop(name)
    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": 0, "best_model": None, "history": [],
                             "seconds": 0.0}
    checkpoint = folder / CHECKPOINT if folder is not None else None
    if checkpoint is not None and resume and checkpoint.exists():
        saved = _load(checkpoint)
        if saved["settings"] != settings:
            raise ValueError(f"{checkpoint} was written with other settings {saved['settings']}; "
                             "use another folder or resume=False")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if "scheduler" in saved:
            scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        if "rng" in saved:  # older checkpoints lack it
            torch.set_rng_state(saved["rng"])
    bar = tqdm(total=config.epochs, initial=state["epoch"], desc=f"{task.name} {encoder}", disable=not progress)
    while state["epoch"] < config.epochs and state["epoch"] - state["best_epoch"] < config.patience:
        start = time.perf_counter()
        losses = _epoch(model, optimizer, scheduler, task, config, state["epoch"])
        score = evaluate(model, task, "val", config.batch_size, config.bf16)
        state["epoch"] += 1
        state["history"].append({"epoch": state["epoch"], "loss": losses, f"val_{task.metric}": score})
        if _better(task, score, state["best"]):
            state.update(best=score, best_epoch=state["epoch"],
                         best_model={k: v.clone() for k, v in model.state_dict().items()})
        state["seconds"] += time.perf_counter() - start
        if checkpoint is not None:
            _save(checkpoint, {"settings": settings, "model": model.state_dict(),
                               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "state": state,
                               "rng": torch.get_rng_state()})
        bar.update(1)
        bar.set_postfix(loss=f"{losses:.4g}", val=f"{score:.4g}")
    bar.close()
    if state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
    scores = {"val": state["best"], "test": evaluate(model, task, "test", config.batch_size, config.bf16)}
    extra = {"epochs": state["epoch"], "best_epoch": state["best_epoch"], "seconds": state["seconds"],
             "parameters": sum(p.numel() for p in model.parameters()), "history": state["history"]}
    return _results(task, encoder, config, scores, extra)


def _epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
           task: WeightTask, config: FitConfig, epoch: int) -> float:
    """One pass over the training split (order drawn from ``(seed, epoch)``, so resuming repeats it); mean loss."""
    model.train()
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    total, count = 0.0, 0
    augment = task.augmentation() if config.augment else None
    for batch in task.train.batches(config.batch_size, generator, augment):
        with _precision(model, config.bf16):
            outputs = model(batch, **task.model_inputs(batch))
        loss: Tensor = task.loss(outputs.float(), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        total, count = total + loss.item() * len(batch), count + len(batch)
    return total / count
