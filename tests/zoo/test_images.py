"""Image sources: offline sets and ``datasets.load_dataset`` on a tiny local dataset (never the network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from encoders.zoo import InrConfig, load_hf_images, load_images, make_inr_zoo


def _write_local_dataset(folder: Path, sizes: list[tuple[int, int]], mode: str = "L") -> np.ndarray:
    """A ``train.parquet`` with an Image column and ClassLabel labels; returns the pixels of the first image."""
    rng = np.random.default_rng(0)
    shapes = [(h, w, 3) if mode == "RGB" else (h, w) for h, w in sizes]
    pixels = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    features = Features({"image": Image(), "label": ClassLabel(names=["zero", "one", "two"])})
    data = {"image": [PILImage.fromarray(p, mode) for p in pixels], "label": [i % 3 for i in range(len(sizes))]}
    folder.mkdir(parents=True)
    Dataset.from_dict(data, features=features).to_parquet(str(folder / "train.parquet"))
    return pixels[0]


def test_offline_sources() -> None:
    images, labels = load_images("digits", limit=5)
    assert images.shape == (5, 1, 8, 8) and labels.shape == (5,)
    assert float(images.min()) >= 0 and float(images.max()) <= 1


def test_load_dataset_on_a_local_grey_dataset(tmp_path: Path) -> None:
    first = _write_local_dataset(tmp_path / "grey", [(6, 5)] * 4)
    images, labels = load_hf_images(str(tmp_path / "grey"), cache_dir=str(tmp_path / "cache"))
    assert images.shape == (4, 1, 6, 5) and labels.tolist() == [0, 1, 2, 0]
    assert torch.allclose(images[0, 0], torch.from_numpy(first / 255.0).float())
    zoo = make_inr_zoo(tmp_path / "zoo", (images, labels), config=InrConfig(steps=3, compile=False), progress=False)
    assert zoo.meta["image_shape"] == [1, 6, 5] and zoo.dataset["label"] == [0, 1, 2, 0]


def test_load_dataset_rgb_gives_three_channels(tmp_path: Path) -> None:
    first = _write_local_dataset(tmp_path / "rgb", [(4, 4)] * 3, mode="RGB")
    images, _ = load_hf_images(str(tmp_path / "rgb"), cache_dir=str(tmp_path / "cache"), limit=2)
    assert images.shape == (2, 3, 4, 4)
    assert torch.allclose(images[0].permute(1, 2, 0), torch.from_numpy(first / 255.0).float())


def test_images_of_different_sizes_are_rejected(tmp_path: Path) -> None:
    _write_local_dataset(tmp_path / "mixed", [(6, 5), (6, 5), (7, 5)])
    with pytest.raises(ValueError, match="differ in shape"):
        load_hf_images(str(tmp_path / "mixed"), cache_dir=str(tmp_path / "cache"))


def test_missing_image_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "table").mkdir()
    Dataset.from_dict({"x": [1, 2]}).to_parquet(str(tmp_path / "table" / "train.parquet"))
    with pytest.raises(ValueError, match="no image column"):
        load_hf_images(str(tmp_path / "table"), cache_dir=str(tmp_path / "cache"))
