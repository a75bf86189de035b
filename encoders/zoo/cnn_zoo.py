"""CNN zoos: small CNNs of random architectures and hyperparameters, checkpointed during training,
generated resumably in shards of models (see :mod:`encoders.zoo.store`)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import torch.nn.functional as F
from datasets import Features, Value
from torch import Tensor
from tqdm.auto import tqdm

from encoders.data import train_test_split
from encoders.zoo.cnn import architecture_id, sample_cnn_spec
from encoders.zoo.cnn_train import TrainHparams, sample_hparams, train_cnn
from encoders.zoo.images import load_images
from encoders.zoo.inr_fit import check_images
from encoders.zoo.parallel import WorkerPool
from encoders.zoo.records import WEIGHT_FEATURES, weight_columns
from encoders.zoo.splits import DEFAULT_FRACTIONS, assign_splits, derive_seed
from encoders.zoo.store import ShardWriter
from encoders.zoo.zoo import Zoo, load_zoo

__all__ = ["CNN_FEATURES", "make_cnn_zoo"]

CNN_FEATURES = Features({
    "model_id": Value("int64"), "arch_index": Value("int64"), "arch_id": Value("string"), "epoch": Value("int32"),
    "spec": Value("string"), "optimizer": Value("string"), "lr": Value("float32"), "weight_decay": Value("float32"),
    "init_scale": Value("float32"), "batch_size": Value("int32"), "train_fraction": Value("float32"),
    "dropout": Value("float32"), "seed": Value("int64"),
    "train_acc": Value("float32"), "test_acc": Value("float32"), "train_loss": Value("float32"),
    "test_loss": Value("float32"), "split": Value("string"), **WEIGHT_FEATURES,
})


@lru_cache(maxsize=2)
def _data(source: str, limit: int | None, test_fraction: float, seed: int,
          image_size: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train/test images and labels of ``source``, resized to ``image_size`` when given (cached per
    process: workers load it once)."""
    images, labels = load_images(source, "train", limit)
    if image_size is not None:
        # area averaging: 28x28 MNIST to 14x14 averages each 2x2 block, as the meta-training tasks do
        images = F.interpolate(images, size=(image_size, image_size), mode="area")
    check_images(images)
    (x_train, y_train), (x_test, y_test) = train_test_split(images, labels, test_fraction, seed)
    return x_train, y_train, x_test, y_test


def _train_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Train one model of the zoo (runs in a worker): its records, weights as state dicts."""
    data = _data(job["source"], job["limit"], job["test_fraction"], job["data_seed"], job["image_size"])
    hparams = TrainHparams(**job["hparams"])
    snapshots = train_cnn(job["spec"], hparams, data, job["checkpoints"], job["seed"])
    return [{"model_id": job["model_id"], "arch_index": job["arch_index"], "arch_id": architecture_id(job["spec"]),
             "spec": json.dumps(job["spec"], sort_keys=True), "dropout": job["spec"]["dropout"],
             "seed": job["seed"], "split": job["split"], **hparams.to_dict(), **snap} for snap in snapshots]


def make_cnn_zoo(
    path: str | os.PathLike,
    source: str = "digits",
    *,
    architectures: int = 16,
    models_per_arch: int = 1,
    checkpoints: Sequence[int] = (0, 1, 2, 4, 8, 16),
    train_fractions: Sequence[float] = (1.0,),
    seed: int = 0,
    limit: int | None = None,
    image_size: int | None = None,
    test_fraction: float = 0.2,
    split_fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    shard_size: int = 8,
    workers: int = 1,
    progress: bool = True,
) -> Zoo:
    """Train ``architectures x models_per_arch`` small CNNs on ``source`` and store their checkpoints at ``path``.

    Architectures come from :func:`~encoders.zoo.cnn.sample_cnn_spec` and hyperparameters from
    :func:`~encoders.zoo.cnn_train.sample_hparams`, all derived from ``seed``. Interrupted runs
    resume: rerunning the same call skips the finished shards and gives the same zoo.

    Args:
        path: zoo folder (created; a folder holding another zoo is refused).
        source: image source for :func:`~encoders.zoo.images.load_images` (``"digits"``, ``"mnist5k"``, ...).
        architectures: number of sampled architectures.
        models_per_arch: hyperparameter draws trained per architecture.
        checkpoints: epochs at which each model is recorded (0 = initial weights).
        train_fractions: each model trains on one of these shares of the training images, drawn
            uniformly (see :class:`~encoders.zoo.cnn_train.TrainHparams`).
        seed: master seed.
        limit: use ``limit`` images of the source (see :func:`~encoders.zoo.images.load_images`).
        image_size: resize the images to ``image_size x image_size`` (area averaging; e.g. 14 for
            MNIST at the meta-training tasks' size); ``None`` keeps them.
        test_fraction: held-out share of the images, for ``test_acc``.
        split_fractions: train/val/test fractions, drawn by architecture.
        shard_size: models per shard (the unit of resumption).
        workers: single-threaded training processes (use the number of cores for speed).
        progress: show a tqdm bar.

    Returns:
        The complete zoo; one record per (model, checkpoint): ``model_id``, ``arch_index``,
        ``arch_id``, ``epoch``, ``spec`` (JSON for :func:`~encoders.zoo.cnn.build_cnn`), the training
        hyperparameters, ``train_acc``/``test_acc``/``train_loss``/``test_loss``, ``split``, weights.
    """
    if architectures < 1 or models_per_arch < 1 or shard_size < 1:
        raise ValueError("architectures, models_per_arch and shard_size must be >= 1")
    fractions = [float(f) for f in train_fractions]
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"train_fractions must be shares in (0, 1], got {list(train_fractions)}")
    if image_size is not None and image_size < 4:
        raise ValueError(f"image_size must be at least 4 pixels, got {image_size}")
    x_train, y_train, _, _ = _data(source, limit, test_fraction, seed, image_size)
    channels, size = x_train.shape[1], min(x_train.shape[2:])
    num_classes = int(y_train.max()) + 1
    specs = [sample_cnn_spec(random.Random(derive_seed(seed, "arch", a)), channels, num_classes, size)
             for a in range(architectures)]
    splits = assign_splits(architectures, split_fractions, seed)
    n_models = architectures * models_per_arch
    jobs = []
    for m in range(n_models):
        arch = m // models_per_arch
        jobs.append({"model_id": m, "arch_index": arch, "spec": specs[arch], "split": splits[arch],
                     "hparams": {**sample_hparams(random.Random(derive_seed(seed, "hparams", m))).to_dict(),
                                 "train_fraction": random.Random(derive_seed(seed, "fraction", m)).choice(fractions)},
                     "seed": derive_seed(seed, "model", m), "checkpoints": sorted(set(checkpoints)),
                     "source": source, "limit": limit, "test_fraction": test_fraction, "data_seed": seed,
                     "image_size": image_size})
    source_meta = {"name": source, "limit": limit, "test_fraction": test_fraction}
    if image_size is not None:  # absent otherwise, so zoos made before the option resume as they are
        source_meta["image_size"] = image_size
    meta = {"kind": "cnn", "source": source_meta,
            "image_shape": list(x_train.shape[1:]), "num_classes": num_classes, "architectures": architectures,
            "models_per_arch": models_per_arch, "checkpoints": sorted(set(checkpoints)), "train_fractions": fractions,
            "seed": seed,
            "split_fractions": dict(split_fractions), "shard_size": shard_size}
    writer = ShardWriter(path, meta, -(-n_models // shard_size), CNN_FEATURES)
    todo = [s for s in range(writer.num_shards) if not writer.has_shard(s)]
    with WorkerPool(workers) as pool, tqdm(total=n_models, desc="CNN models", disable=not progress) as bar:
        bar.update(n_models - sum(len(jobs[s * shard_size:(s + 1) * shard_size]) for s in todo))
        for shard in todo:
            shard_jobs = jobs[shard * shard_size:(shard + 1) * shard_size]
            records = [r for model in pool.map(_train_job, shard_jobs) for r in model]
            columns = {name: [r[name] for r in records] for name in CNN_FEATURES if name not in WEIGHT_FEATURES}
            writer.write_shard(shard, {**columns, **weight_columns([r["state_dict"] for r in records])})
            bar.update(len(shard_jobs))
    writer.finish()
    return load_zoo(path)
