"""Loaders for published SIREN zoos stored as folders of per-INR PyTorch state dicts.

* **DWSNets** (Navon et al. 2023; MNIST/FashionMNIST INRs): ``<root>/<name>_<training|testing>_<label>_<index>/
  checkpoints/model_final.pth``, keys ``seq.{i}.weight`` / ``seq.{i}.bias``, 2-32-32-1 SIREN, w0 = 30,
  output + 0.5 fitting intensities in [0, 1], coordinates ``(x, y)`` = (column, row) in [-1, 1] —
  exactly the conventions of :class:`~encoders.zoo.siren.Siren`.
* **NFN** (Zhou et al. 2023; MNIST/FashionMNIST/CIFAR-10 SIRENs): ``<root>/<prefix>_<label>s/net<index>.pth``,
  keys ``net.{i}.linear.weight`` for sine layers and ``net.{last}.weight`` for the output layer,
  no output offset, targets in [-1, 1], coordinates ``(row, column)``. The loader swaps the two
  input columns of the first layer so the networks read the (column, row) grid used here.
* Any other folder of SIREN state dicts: :func:`load_state_dict_folder` with a ``key_map`` to the
  ``layers.{i}.weight`` naming and a ``describe`` function giving each file's label and image index.

The architecture is read from the first file; a file with other parameter names or shapes raises
``ValueError`` naming it. PSNR is not known without the images and is stored as NaN.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor

from encoders.zoo.inr_fit import InrConfig
from encoders.zoo.inr_zoo import INR_FEATURES
from encoders.zoo.records import check_param_shapes, weight_columns
from encoders.zoo.siren import siren_param_shapes
from encoders.zoo.splits import DEFAULT_FRACTIONS, assign_splits
from encoders.zoo.zoo import Zoo

__all__ = ["load_dwsnets_zoo", "load_nfn_zoo", "load_state_dict_folder"]

Describe = Callable[[Path], Mapping[str, Any]]


def _hidden_widths(state_dict: Mapping[str, Tensor], folder: Path) -> tuple[int, ...]:
    weights = [v for k, v in state_dict.items() if k.endswith("weight")]
    if len(weights) < 2 or any(w.dim() != 2 for w in weights):
        raise ValueError(f"the state dicts in {str(folder)!r} are not SIRENs (need 2-D weights of >= 2 layers)")
    return tuple(w.shape[0] for w in weights[:-1])


def load_state_dict_folder(
    folder: str | os.PathLike,
    pattern: str = "**/*.pth",
    *,
    w0: float = 30.0,
    offset: float = 0.5,
    value_range: tuple[float, float] = (0.0, 1.0),
    image_shape: tuple[int, int, int] = (1, 28, 28),
    key_map: Callable[[str], str] | None = None,
    transform: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
    describe: Describe | None = None,
    seed: int = 0,
    split_fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
) -> Zoo:
    """An INR zoo (in memory) from the SIREN state dicts ``folder.glob(pattern)``, in sorted path order.

    Args:
        folder, pattern: where the ``torch.save``-d state dicts are.
        w0, offset, value_range, image_shape: the conventions the SIRENs were fitted with.
        key_map: renames a key to the ``layers.{i}.weight`` / ``layers.{i}.bias`` naming.
        transform: adjusts a renamed state dict (e.g. to another coordinate order).
        describe: path -> ``{"label": int, "image_index": int, "split": str | None}`` (any subset);
            by default labels are -1 and the image index is the file's position.
        seed, split_fractions: draw the split of records whose ``describe`` gives none, by image.

    Raises:
        FileNotFoundError: no folder or no matching file. ValueError: a file that does not hold the
        SIREN architecture of the first one.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"INR folder {str(root)!r} does not exist")
    files = sorted(root.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no files match {pattern!r} in {str(root)!r}")
    state_dicts, infos = [], []
    for position, file in enumerate(files):
        raw = torch.load(file, map_location="cpu", weights_only=True)
        state_dict = {(key_map(k) if key_map else k): v.float() for k, v in raw.items()}
        state_dicts.append(transform(state_dict) if transform else state_dict)
        infos.append({"label": -1, "image_index": position, "split": None, **(describe(file) if describe else {})})
    hidden = _hidden_widths(state_dicts[0], root)
    expected = siren_param_shapes(hidden, 2, image_shape[0])
    for file, state_dict in zip(files, state_dicts):
        check_param_shapes({k: list(v.shape) for k, v in state_dict.items()}, expected, f"{file}")
    image_ids = sorted({info["image_index"] for info in infos})
    drawn = dict(zip(image_ids, assign_splits(len(image_ids), split_fractions, seed)))
    config = InrConfig(hidden=hidden, w0=w0, offset=offset, value_range=value_range)
    columns = {
        "image_index": [info["image_index"] for info in infos], "copy": [0] * len(files),
        "label": [info["label"] for info in infos], "seed": [-1] * len(files), "psnr": [math.nan] * len(files),
        "split": [info["split"] or drawn[info["image_index"]] for info in infos], **weight_columns(state_dicts),
    }
    meta = {"kind": "inr", "source": {"name": "state-dict folder", "path": str(root.resolve()), "pattern": pattern},
            "config": config.to_dict(), "siren": config.siren_kwargs(image_shape[0]), "image_shape": list(image_shape),
            "num_images": len(image_ids), "copies": 1, "seed": seed, "split_fractions": dict(split_fractions)}
    return Zoo(Dataset.from_dict(columns, features=INR_FEATURES), meta)


_DWS_DIR = re.compile(r"_(training|testing|train|test)_(\d+)_(\d+)$")


def _describe_dwsnets(file: Path) -> dict[str, Any]:
    match = _DWS_DIR.search(file.parent.parent.name)
    if match is None:
        raise ValueError(f"{file} is not laid out as <name>_<training|testing>_<label>_<index>/checkpoints/*.pth")
    split, label, index = match.groups()
    return {"split": "train" if split.startswith("train") else "test", "label": int(label), "image_index": int(index)}


def _dwsnets_key(key: str) -> str:
    return re.sub(r"^seq\.", "layers.", key)


def load_dwsnets_zoo(folder: str | os.PathLike, image_shape: tuple[int, int, int] = (1, 28, 28)) -> Zoo:
    """The DWSNets MNIST/FashionMNIST INR zoo (unzipped ``mnist-inrs`` folder); splits train/test as published.

    DWSNets carve their 5000 validation INRs out of ``train`` at random; do the same with
    ``zoo.split("train").dataset.train_test_split(...)`` if needed. Image indices restart in each split.
    """
    return load_state_dict_folder(folder, "*/checkpoints/*.pth", image_shape=image_shape, key_map=_dwsnets_key,
                                  describe=_describe_dwsnets)


_NFN_KEY = re.compile(r"^net\.(\d+)\.(?:linear\.)?(weight|bias)$")


def _nfn_key(key: str) -> str:
    match = _NFN_KEY.match(key)
    if match is None:
        raise ValueError(f"unexpected key {key!r} in an NFN SIREN (expected net.<i>[.linear].<weight|bias>)")
    return f"layers.{match.group(1)}.{match.group(2)}"


def _nfn_to_xy(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {**state_dict, "layers.0.weight": state_dict["layers.0.weight"][:, [1, 0]]}


def _describe_nfn(file: Path) -> dict[str, Any]:
    label, index = re.search(r"_(\d)s$", file.parent.name), re.search(r"net(\d+)\.pth$", file.name)
    if label is None or index is None:
        raise ValueError(f"{file} is not laid out as <prefix>_<label>s/net<index>.pth")
    return {"label": int(label.group(1)), "image_index": int(index.group(1))}


def load_nfn_zoo(
    folder: str | os.PathLike, prefix: str = "randinit_test", image_shape: tuple[int, int, int] = (1, 28, 28),
    seed: int = 0, split_fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
) -> Zoo:
    """An NFN SIREN zoo (``<folder>/<prefix>_<label>s/net<index>.pth``); ``image_shape`` ``(3, 32, 32)`` for CIFAR-10.

    NFN splits by index ranges chosen per experiment; here splits are drawn by image with ``seed``.
    """
    return load_state_dict_folder(folder, f"{prefix}_*/*.pth", offset=0.0, value_range=(-1.0, 1.0),
                                  image_shape=image_shape, key_map=_nfn_key, transform=_nfn_to_xy,
                                  describe=_describe_nfn, seed=seed, split_fractions=split_fractions)
