"""Small inputs shared by the zoo tests: a few real digits and a tiny finished INR zoo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from encoders.data import load_digits
from encoders.zoo import InrConfig, Zoo, load_zoo, make_inr_zoo

FAST = InrConfig(steps=60, compile=False)  # eager: no compilation in tests


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 12 scikit-learn digits: images ``[12, 1, 8, 8]``, labels ``[12]``."""
    images, labels = load_digits()
    return images[:12], labels[:12]


@pytest.fixture(scope="session")
def inr_zoo_dir(tmp_path_factory: pytest.TempPathFactory, digits: tuple[torch.Tensor, torch.Tensor]) -> Path:
    path = tmp_path_factory.mktemp("zoo") / "inr"
    make_inr_zoo(path, digits, config=FAST, shard_size=5, progress=False)
    return path


@pytest.fixture
def inr_zoo(inr_zoo_dir: Path) -> Zoo:
    return load_zoo(inr_zoo_dir)
