"""Tiny zoos made by the tests (a few seconds): 40 SIRENs on 8x8 digits, 10 CNN architectures x 2 checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from encoders.tasks import make_task
from encoders.zoo.cnn_zoo import make_cnn_zoo
from encoders.zoo.inr_fit import InrConfig
from encoders.zoo.inr_zoo import make_inr_zoo
from encoders.zoo.zoo import Zoo, load_zoo


@pytest.fixture(scope="session")
def inr_zoo_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zoos") / "inr"
    make_inr_zoo(path, "digits", limit=40, config=InrConfig(steps=40, compile=False), progress=False)
    return path


@pytest.fixture(scope="session")
def inr_zoo(inr_zoo_dir: Path) -> Zoo:
    return load_zoo(inr_zoo_dir)


@pytest.fixture(scope="session")
def cnn_zoo(tmp_path_factory) -> Zoo:
    return make_cnn_zoo(tmp_path_factory.mktemp("zoos") / "cnn", "digits", architectures=10, checkpoints=(0, 1),
                        limit=400, progress=False)


@pytest.fixture(scope="session")
def tasks(inr_zoo: Zoo, cnn_zoo: Zoo) -> dict:
    return {name: make_task(name, cnn_zoo if name == "generalization" else inr_zoo)
            for name in ("inr-classify", "inr-edit", "generalization")}
