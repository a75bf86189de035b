"""INR zoos: one SIREN per image (or several, ``copies``, from different seeds), resumable on disk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import torch
from datasets import Features, Value
from torch import Tensor
from tqdm.auto import tqdm

from encoders.zoo.images import load_images
from encoders.zoo.inr_fit import InrConfig, SirenFitter, check_images
from encoders.zoo.records import WEIGHT_FEATURES, weight_columns
from encoders.zoo.splits import DEFAULT_FRACTIONS, assign_splits, derive_seed
from encoders.zoo.store import ShardWriter
from encoders.zoo.zoo import Zoo, load_zoo

__all__ = ["INR_FEATURES", "make_inr_zoo"]

INR_FEATURES = Features({
    "image_index": Value("int64"), "copy": Value("int32"), "label": Value("int64"), "seed": Value("int64"),
    "psnr": Value("float32"), "split": Value("string"), **WEIGHT_FEATURES,
})


def _tensor_digest(*tensors: Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def make_inr_zoo(
    path: str | os.PathLike,
    source: str | tuple[Tensor, Tensor] = "mnist5k",
    *,
    config: InrConfig | None = None,
    image_split: str = "train",
    limit: int | None = None,
    copies: int = 1,
    eval_copies: int | None = None,
    seed: int = 0,
    split_fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    shard_size: int = 256,
    workers: int = 1,
    progress: bool = True,
) -> Zoo:
    """Fit a SIREN to every image of ``source`` and store the zoo at ``path``.

    Interrupted runs resume: rerunning the same call skips the shards already written and gives the
    same zoo as an uninterrupted run (see :mod:`encoders.zoo.store`).

    Args:
        path: zoo folder (created; a folder holding another zoo is refused).
        source: ``(images [N, C, H, W] in [0, 1], labels [N])`` or a name for
            :func:`~encoders.zoo.images.load_images` (``"mnist5k"``, ``"digits"``, ``"mnist"``, ...).
        config: SIREN architecture and fitting settings (default: DWSNets conventions, 80 Adam steps).
        image_split: split of a Hugging Face source to read.
        limit: use ``limit`` images (see :func:`~encoders.zoo.images.load_images`).
        copies: SIRENs per image, each from its own seed.
        eval_copies: SIRENs per validation and test image (default: ``copies``). ``copies=K,
            eval_copies=1`` is the NFN zoo's layout: extra views of the training images only, so
            scores stay comparable with a one-copy zoo and no fitting time goes to views nobody
            trains on.
        seed: master seed; SIREN ``(image i, copy c)`` starts from ``derive_seed(seed, i, c)``.
        split_fractions: train/val/test fractions, drawn by image (all copies of an image share a split).
        shard_size: records per shard (the unit of resumption).
        workers: single-threaded fitting processes (use the number of cores for speed).
        progress: show a tqdm bar.

    Returns:
        The complete zoo (:class:`~encoders.zoo.zoo.Zoo`); columns ``image_index``, ``copy``,
        ``label``, ``seed``, ``psnr`` (dB of the stored weights), ``split`` and the weight columns.
    """
    config = config or InrConfig()
    if isinstance(source, str):
        images, labels = load_images(source, image_split, limit)
        source_meta: dict[str, Any] = {"name": source, "split": image_split, "limit": limit}
    else:
        images, labels = source
        images, labels = images[:limit], labels[:limit]
        source_meta = {"name": "tensors", "digest": _tensor_digest(images, labels)}
    check_images(images)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape [{len(images)}], got {tuple(labels.shape)}")
    eval_copies = copies if eval_copies is None else eval_copies
    if min(copies, eval_copies, shard_size) < 1:
        raise ValueError(f"copies, eval_copies and shard_size must be >= 1, got {copies}, {eval_copies} and "
                         f"{shard_size}")
    splits = assign_splits(len(images), split_fractions, seed)
    # records in image order, each image's copies together: (image index, copy)
    pairs = torch.tensor([(i, c) for i, split in enumerate(splits)
                          for c in range(copies if split == "train" else eval_copies)], dtype=torch.long)
    n_records = len(pairs)
    num_shards = -(-n_records // shard_size)
    meta = {"kind": "inr", "source": source_meta, "config": config.to_dict(),
            "siren": config.siren_kwargs(images.shape[1]), "image_shape": list(images.shape[1:]),
            "num_images": len(images), "copies": copies,
            **({"eval_copies": eval_copies} if eval_copies != copies else {}),  # old zoos' metadata unchanged
            "seed": seed, "split_fractions": dict(split_fractions),
            "shard_size": shard_size,
            "conventions": "pixel (row r, col c) at (x, y) = (linspace(-1,1,W)[c], linspace(-1,1,H)[r]); "
                           "output = SIREN(x, y) + offset fits value_range; PSNR on the [0, 1] scale"}
    writer = ShardWriter(path, meta, num_shards, INR_FEATURES)
    todo = [s for s in range(num_shards) if not writer.has_shard(s)]
    with SirenFitter(config, workers) as fitter:
        for shard in tqdm(todo, desc="INR shards", disable=not progress):
            image_index, copy = pairs[shard * shard_size:(shard + 1) * shard_size].unbind(1)
            seeds = [derive_seed(seed, int(i), int(c)) for i, c in zip(image_index, copy)]
            params, psnr = fitter.fit(images[image_index], seeds)
            state_dicts = [{k: v[j] for k, v in params.items()} for j in range(len(image_index))]
            writer.write_shard(shard, {
                "image_index": image_index.tolist(), "copy": copy.tolist(), "label": labels[image_index].tolist(),
                "seed": seeds, "psnr": psnr.tolist(), "split": [splits[int(i)] for i in image_index],
                **weight_columns(state_dicts),
            })
    writer.finish()
    return load_zoo(path)
