"""INR zoo generation: records, splits, resumption, determinism, workers, bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from encoders.zoo import InrConfig, Zoo, load_zoo, make_inr_zoo
from encoders.zoo.inr_fit import SirenFitter
from tests.zoo.conftest import FAST

Digits = tuple[torch.Tensor, torch.Tensor]


def test_records_columns_and_modules(inr_zoo: Zoo, digits: Digits) -> None:
    images, labels = digits
    data = inr_zoo.dataset
    assert len(inr_zoo) == 12 and inr_zoo.kind == "inr"
    assert data["image_index"] == list(range(12)) and data["label"] == labels.tolist()
    assert min(data["psnr"]) > 35
    assert inr_zoo.meta["siren"] == {"hidden": [32, 32], "w0": 30.0, "in_features": 2, "out_features": 1,
                                     "offset": 0.5}
    stacked = inr_zoo.stacked_params()
    assert stacked["layers.1.weight"].shape == (12, 32, 32)
    assert torch.equal(inr_zoo.state_dict(4)["layers.1.weight"], stacked["layers.1.weight"][4])
    drawn = inr_zoo.render([4])
    assert float(-10 * torch.log10((drawn - images[4:5]).square().mean())) == pytest.approx(data["psnr"][4], abs=1e-2)
    module_out = inr_zoo.module(4)(torch.stack(torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8),
                                                              indexing="xy"), -1).reshape(-1, 2))
    assert torch.allclose(module_out.detach().reshape(1, 1, 8, 8), drawn, atol=1e-5)


def test_splits_are_by_image(tmp_path: Path, digits: Digits) -> None:
    zoo = make_inr_zoo(tmp_path / "z", digits, config=InrConfig(steps=2, compile=False), copies=2, limit=10,
                       split_fractions={"train": 0.6, "val": 0.2, "test": 0.2}, progress=False)
    data = zoo.dataset
    assert len(zoo) == 20 and data["copy"] == [0, 1] * 10
    split_of = {}
    for image, split in zip(data["image_index"], data["split"]):
        assert split_of.setdefault(image, split) == split
    assert sorted(split_of.values()).count("train") == 6
    assert len(zoo.split("val")) == 4 and set(zoo.split("val").dataset["split"]) == {"val"}
    copies = zoo.stacked_params()["layers.0.weight"]
    assert not torch.equal(copies[0], copies[1])  # two seeds per image
    with pytest.raises(ValueError, match="no split 'holdout'"):
        zoo.split("holdout")


def test_extra_views_of_training_images_only(tmp_path: Path, digits: Digits) -> None:
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    zoo = make_inr_zoo(tmp_path / "z", digits, config=InrConfig(steps=2, compile=False), copies=3, eval_copies=1,
                       limit=10, split_fractions=fractions, shard_size=4, progress=False)
    one = make_inr_zoo(tmp_path / "one", digits, config=InrConfig(steps=2, compile=False), limit=10,
                       split_fractions=fractions, progress=False)
    data = zoo.dataset
    views = Counter(data["image_index"])
    split_of = dict(zip(data["image_index"], data["split"]))
    assert views == {image: 3 if split == "train" else 1 for image, split in split_of.items()}
    assert len(zoo) == 6 * 3 + 4
    train_images = set(zoo.split("train").dataset["image_index"])
    held_out = set(zoo.split("val").dataset["image_index"]) | set(zoo.split("test").dataset["image_index"])
    assert not train_images & held_out and len(held_out) == 4
    # the same images land in the same splits as in a one-copy zoo, and copy 0 starts from the same seed
    assert dict(zip(one.dataset["image_index"], one.dataset["split"])) == split_of
    first = {i: s for i, c, s in zip(data["image_index"], data["copy"], data["seed"]) if c == 0}
    assert first == dict(zip(one.dataset["image_index"], one.dataset["seed"]))
    with pytest.raises(ValueError, match="eval_copies"):
        make_inr_zoo(tmp_path / "bad", digits, copies=2, eval_copies=0, limit=4, progress=False)


def test_resume_after_interruption_equals_uninterrupted_run(
    tmp_path: Path, digits: Digits, inr_zoo: Zoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "resumed"
    calls = {"n": 0}
    real_fit = SirenFitter.fit

    def flaky_fit(self: SirenFitter, images: torch.Tensor, seeds: list[int]):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real_fit(self, images, seeds)

    monkeypatch.setattr(SirenFitter, "fit", flaky_fit)
    with pytest.raises(KeyboardInterrupt):
        make_inr_zoo(path, digits, config=FAST, shard_size=5, progress=False)
    with pytest.raises(ValueError, match="partial"):
        load_zoo(path)
    monkeypatch.setattr(SirenFitter, "fit", real_fit)
    resumed = make_inr_zoo(path, digits, config=FAST, shard_size=5, progress=False)
    assert len(resumed) == 12 and resumed.dataset["image_index"] == list(range(12))  # no duplicates, in order
    for key, value in inr_zoo.stacked_params().items():
        assert torch.equal(resumed.stacked_params()[key], value)
    assert resumed.dataset["psnr"] == inr_zoo.dataset["psnr"]


def test_same_seed_same_zoo_other_seed_other_zoo(tmp_path: Path, digits: Digits, inr_zoo: Zoo) -> None:
    again = make_inr_zoo(tmp_path / "again", digits, config=FAST, shard_size=12, progress=False)
    other = make_inr_zoo(tmp_path / "other", digits, config=FAST, seed=1, limit=3, progress=False)
    assert torch.equal(again.stacked_params()["layers.1.weight"], inr_zoo.stacked_params()["layers.1.weight"])
    assert not torch.equal(other.stacked_params()["layers.1.weight"], inr_zoo.stacked_params()["layers.1.weight"][:3])


def test_two_worker_processes_give_the_same_zoo(tmp_path: Path, digits: Digits, inr_zoo: Zoo) -> None:
    config = InrConfig(steps=60, batch_size=4, compile=False)
    single = make_inr_zoo(tmp_path / "one", digits, config=config, limit=8, progress=False)
    double = make_inr_zoo(tmp_path / "two", digits, config=config, limit=8, workers=2, progress=False)
    for key, value in single.stacked_params().items():
        assert torch.equal(double.stacked_params()[key], value)


def test_rerun_with_other_settings_is_refused(inr_zoo_dir: Path, digits: Digits) -> None:
    with pytest.raises(ValueError, match="different zoo.*config"):
        make_inr_zoo(inr_zoo_dir, digits, config=InrConfig(steps=5, compile=False), shard_size=5, progress=False)
    with pytest.raises(ValueError, match="different zoo.*source"):
        make_inr_zoo(inr_zoo_dir, (digits[0].flip(0), digits[1]), config=FAST, shard_size=5, progress=False)


@pytest.mark.parametrize(("images", "labels", "message"), [
    (torch.rand(4, 8, 8), torch.zeros(4, dtype=torch.long), r"\[N, C, H, W\]; got \(4, 8, 8\)"),
    (torch.rand(4, 1, 8, 8) + 1, torch.zeros(4, dtype=torch.long), "must lie in"),
    (torch.rand(4, 1, 8, 8), torch.zeros(3, dtype=torch.long), "labels must have shape"),
])
def test_bad_images_are_rejected(tmp_path: Path, images: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_inr_zoo(tmp_path / "bad", (images, labels), config=FAST, progress=False)
