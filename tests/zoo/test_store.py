"""Zoo folders that are missing, partial, corrupt or hold weights of another architecture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from encoders.zoo import Zoo, load_zoo
from encoders.zoo.records import weight_columns
from encoders.zoo.siren import Siren


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_missing_folder_or_manifest(tmp_path: Path, inr_zoo_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_zoo(tmp_path / "nowhere")
    path = _copy(inr_zoo_dir, tmp_path)
    (path / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_zoo(path)


def test_partial_zoo_is_not_complete(tmp_path: Path, inr_zoo_dir: Path) -> None:
    path = _copy(inr_zoo_dir, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ValueError, match="partial"):
        load_zoo(path)


def test_garbled_manifest(tmp_path: Path, inr_zoo_dir: Path) -> None:
    path = _copy(inr_zoo_dir, tmp_path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_zoo(path)
    (path / "manifest.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not an l2o zoo manifest"):
        load_zoo(path)


def test_missing_shard(tmp_path: Path, inr_zoo_dir: Path) -> None:
    path = _copy(inr_zoo_dir, tmp_path)
    shutil.rmtree(path / "shards" / "shard-00001")
    with pytest.raises(FileNotFoundError, match="shard-00001"):
        load_zoo(path)


def test_corrupt_or_truncated_shard(tmp_path: Path, inr_zoo_dir: Path) -> None:
    path = _copy(inr_zoo_dir, tmp_path)
    arrow = next((path / "shards" / "shard-00002").glob("data-*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-100])
    with pytest.raises(ValueError, match="shard-00002.*corrupt"):
        load_zoo(path)
    with pytest.raises(ValueError, match="shard-00002.*cannot be read"):
        load_zoo(path, verify=False)


def test_wrong_row_count(tmp_path: Path, inr_zoo_dir: Path) -> None:
    path = _copy(inr_zoo_dir, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["shards"][0]["num_rows"] += 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="manifest says"):
        load_zoo(path)


def test_weights_of_another_architecture_are_rejected(inr_zoo: Zoo, tmp_path: Path) -> None:
    wrong = Siren(hidden=(16, 16)).state_dict()
    record = {**inr_zoo.dataset[0], **{k: v[0] for k, v in weight_columns([wrong]).items()}}
    dataset = inr_zoo.dataset.select(range(3)).add_item(record)
    with pytest.raises(ValueError, match="record 3: weights do not match the declared architecture"):
        Zoo(dataset, inr_zoo.meta)
    missing = {k: v for k, v in inr_zoo.state_dict(0).items() if k != "layers.2.bias"}
    record = {**inr_zoo.dataset[0], **{k: v[0] for k, v in weight_columns([missing]).items()}}
    with pytest.raises(ValueError, match="record 1"):
        Zoo(inr_zoo.dataset.select(range(1)).add_item(record), inr_zoo.meta)


def test_non_zoo_folder_is_not_overwritten(tmp_path: Path, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    from encoders.zoo import make_inr_zoo

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and is not a zoo folder"):
        make_inr_zoo(tmp_path, digits, progress=False)


def test_save_and_reload(inr_zoo: Zoo, tmp_path: Path) -> None:
    inr_zoo.split("train").save(tmp_path / "train")
    reloaded = load_zoo(tmp_path / "train")
    assert reloaded.dataset["image_index"] == inr_zoo.split("train").dataset["image_index"]
    assert reloaded.meta == inr_zoo.meta
