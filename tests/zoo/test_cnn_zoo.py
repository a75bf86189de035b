"""CNN specs, training with checkpoints, and CNN zoo generation with resumption."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from encoders.data import load_digits, train_test_split
from encoders.zoo import Residual, Zoo, build_cnn, load_zoo, make_cnn_zoo, sample_cnn_spec, train_cnn
from encoders.zoo.cnn_train import TrainHparams, evaluate
from encoders.zoo.cnn_zoo import _train_job
from encoders.zoo.images import load_images

SMALL = {"architectures": 3, "models_per_arch": 2, "checkpoints": (0, 1), "limit": 200, "shard_size": 2,
         "split_fractions": {"train": 1 / 3, "val": 1 / 3, "test": 1 / 3}, "progress": False}


@pytest.fixture(scope="module")
def cnn_zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return make_cnn_zoo(tmp_path_factory.mktemp("cnn") / "zoo", "digits", **SMALL)


def test_sampled_specs_cover_the_wild_park_space() -> None:
    rng = random.Random(0)
    specs = [sample_cnn_spec(rng, 1, 10, 28) for _ in range(60)]
    layers = [layer for spec in specs for layer in spec["layers"]]
    assert {len(s["layers"]) for s in specs} == {2, 3, 4, 5}
    assert {layer["kernel_size"] for layer in layers} == {3, 5, 7}
    assert {layer["out_channels"] for layer in layers} <= {4, 8, 16, 32}
    assert any(layer["residual"] for layer in layers) and len({layer["activation"] for layer in layers}) >= 5
    for spec in specs:
        json.dumps(spec)
        model = build_cnn(spec)
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
        torch.fx.symbolic_trace(model)  # the neural-graph builder traces these


def test_residual_block_is_x_plus_conv() -> None:
    spec = {"in_channels": 1, "num_classes": 3, "dropout": 0.0, "layers": [
        {"out_channels": 4, "kernel_size": 3, "stride": 1, "activation": "relu", "residual": False},
        {"out_channels": 4, "kernel_size": 5, "stride": 1, "activation": "tanh", "residual": True}]}
    model = build_cnn(spec)
    block = model[2]
    assert isinstance(block, Residual)
    x = torch.rand(2, 4, 6, 6)
    assert torch.allclose(block(x), x + block.conv(x))


@pytest.mark.parametrize(("change", "message"), [
    ({"activation": "swish"}, "unknown activation"),
    ({"residual": True, "out_channels": 8}, "residual layer needs"),
    ({"kernel_size": 4}, "odd kernel"),
])
def test_bad_specs_are_rejected(change: dict, message: str) -> None:
    layer = {"out_channels": 4, "kernel_size": 3, "stride": 1, "activation": "relu", "residual": False}
    spec = {"in_channels": 4, "num_classes": 10, "layers": [{**layer, **change}]}
    with pytest.raises(ValueError, match=message):
        build_cnn(spec)


def test_training_is_deterministic_and_checkpointed() -> None:
    images, labels = load_digits()
    data = (images[:160], labels[:160], images[160:200], labels[160:200])
    spec = sample_cnn_spec(random.Random(1), 1, 10, 8)
    hp = TrainHparams("adam", 3e-3, 1e-4, 1.0, 32)
    first = train_cnn(spec, hp, data, [0, 2, 1], seed=3)
    second = train_cnn(spec, hp, data, [0, 1, 2], seed=3)
    assert [c["epoch"] for c in first] == [0, 1, 2]
    for a, b in zip(first, second):
        assert a["test_acc"] == b["test_acc"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert not torch.equal(first[0]["state_dict"]["0.weight"], first[2]["state_dict"]["0.weight"])


def test_a_training_fraction_trains_on_a_fixed_subset() -> None:
    images, labels = load_digits()
    data = (images[:160], labels[:160], images[160:200], labels[160:200])
    spec = sample_cnn_spec(random.Random(1), 1, 10, 8)
    full = train_cnn(spec, TrainHparams("adam", 3e-3, 1e-4, 1.0, 32), data, [1], seed=3)
    quarter = TrainHparams("adam", 3e-3, 1e-4, 1.0, 32, train_fraction=0.25)
    a, b = (train_cnn(spec, quarter, data, [1], seed=3) for _ in range(2))
    assert torch.equal(a[0]["state_dict"]["0.weight"], b[0]["state_dict"]["0.weight"])  # the same subset
    assert not torch.equal(a[0]["state_dict"]["0.weight"], full[0]["state_dict"]["0.weight"])
    with pytest.raises(ValueError, match=r"train_fraction must be in \(0, 1\]"):
        TrainHparams("adam", 3e-3, 1e-4, 1.0, 32, train_fraction=0.0)


def test_zoo_records_splits_and_accuracies(cnn_zoo: Zoo) -> None:
    data = cnn_zoo.dataset
    assert len(cnn_zoo) == 12 and cnn_zoo.kind == "cnn"
    assert sorted(zip(data["model_id"], data["epoch"])) == [(m, e) for m in range(6) for e in (0, 1)]
    split_of: dict[str, str] = {}
    for arch, split in zip(data["arch_id"], data["split"]):
        assert split_of.setdefault(arch, split) == split  # split by architecture
    assert sorted(split_of.values()) == ["test", "train", "val"]
    images, labels = load_images("digits", "train", 200)  # the zoo's data: the same 200 images
    _, (x_test, y_test) = train_test_split(images, labels, 0.2, 0)
    i = data["epoch"].index(1)
    model = cnn_zoo.module(i)
    assert model.training is False
    assert evaluate(model, x_test, y_test)[0] == pytest.approx(data["test_acc"][i], abs=1e-6)
    assert json.loads(data["spec"][i]) == json.loads(data["spec"][i - 1])


def test_resume_after_interruption_equals_uninterrupted_run(
    tmp_path: Path, cnn_zoo: Zoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}

    def flaky(job: dict) -> list[dict]:
        calls["n"] += 1
        if calls["n"] == 4:  # during the second shard
            raise KeyboardInterrupt("simulated interruption")
        return _train_job(job)

    monkeypatch.setattr("encoders.zoo.cnn_zoo._train_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_cnn_zoo(tmp_path / "zoo", "digits", **SMALL)
    assert len(list((tmp_path / "zoo" / "shards").iterdir())) == 1
    with pytest.raises(ValueError, match="partial"):
        load_zoo(tmp_path / "zoo")
    monkeypatch.setattr("encoders.zoo.cnn_zoo._train_job", _train_job)
    resumed = make_cnn_zoo(tmp_path / "zoo", "digits", **SMALL)
    columns = ["model_id", "epoch", "arch_id", "spec", "lr", "test_acc", "params"]
    assert resumed.dataset.select_columns(columns).to_dict() == cnn_zoo.dataset.select_columns(columns).to_dict()


def test_wrong_cnn_weights_are_rejected(cnn_zoo: Zoo) -> None:
    other = json.loads(cnn_zoo.dataset["spec"][0])
    other["layers"][0]["out_channels"] += 1
    if other["layers"][1]["residual"]:
        other["layers"][1]["out_channels"] += 1
    dataset = cnn_zoo.dataset.select(range(2))
    dataset = dataset.map(lambda r, i: {"spec": json.dumps(other) if i == 1 else r["spec"]}, with_indices=True,
                          keep_in_memory=True)
    with pytest.raises(ValueError, match="record 1: weights do not match"):
        Zoo(dataset, cnn_zoo.meta)


def test_zoo_images_can_be_resized(tmp_path: Path) -> None:
    """The roadmap's 14x14 MNIST: the zoo trains on area-averaged images and records their shape."""
    zoo = make_cnn_zoo(tmp_path / "z", "mnist5k", architectures=3, checkpoints=(0,), limit=100, image_size=14,
                       progress=False)
    assert zoo.meta["image_shape"] == [1, 14, 14] and zoo.meta["source"]["image_size"] == 14
    images, labels = load_images("mnist5k", "train", 100)
    small = torch.nn.functional.avg_pool2d(images, 2)  # 28 -> 14 by 2x2 means, what "area" resizing does
    _, (x_test, y_test) = train_test_split(small, labels, 0.2, 0)
    assert evaluate(zoo.module(0), x_test, y_test)[0] == pytest.approx(zoo.dataset["test_acc"][0], abs=1e-6)
    with pytest.raises(ValueError, match="image_size must be at least 4"):
        make_cnn_zoo(tmp_path / "bad", "digits", architectures=1, image_size=2, progress=False)
