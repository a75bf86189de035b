"""Loaders for the published SIREN zoos' on-disk layouts (DWSNets, NFN), on small fake folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from encoders.zoo import Siren, coordinate_grid, load_dwsnets_zoo, load_nfn_zoo, load_state_dict_folder, load_zoo


def _sirens(n: int, offset: float = 0.5) -> list[Siren]:
    torch.manual_seed(0)
    return [Siren(hidden=(32, 32), offset=offset) for _ in range(n)]


def test_dwsnets_layout(tmp_path: Path) -> None:
    sirens, names = _sirens(3), ["mnist_png_training_2_23", "mnist_png_training_7_5", "mnist_png_testing_1_0"]
    for siren, name in zip(sirens, names):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        state = {k.replace("layers.", "seq."): v for k, v in siren.state_dict().items()}  # DWSNets' keys
        torch.save(state, tmp_path / name / "checkpoints" / "model_final.pth")
    zoo = load_dwsnets_zoo(tmp_path)
    order = sorted(range(3), key=lambda i: names[i])
    assert zoo.dataset["label"] == [[2, 7, 1][i] for i in order]
    assert zoo.dataset["image_index"] == [[23, 5, 0][i] for i in order]
    assert zoo.dataset["split"] == [["train", "train", "test"][i] for i in order]
    coords = coordinate_grid(28, 28)
    for row, i in enumerate(order):
        assert torch.allclose(zoo.module(row)(coords), sirens[i](coords))
    zoo.save(tmp_path.parent / "saved")
    assert len(load_zoo(tmp_path.parent / "saved")) == 3


def test_nfn_layout_swaps_to_column_row_coordinates(tmp_path: Path) -> None:
    sirens = _sirens(2, offset=0.0)
    for index, (label, siren) in enumerate(zip([4, 9], sirens)):
        folder = tmp_path / f"randinit_test_{label}s"
        folder.mkdir()
        state = {}
        for k, v in siren.state_dict().items():
            layer, kind = int(k.split(".")[1]), k.split(".")[2]
            state[f"net.{layer}.linear.{kind}" if layer < 2 else f"net.{layer}.{kind}"] = v  # NFN's keys
        torch.save(state, folder / f"net{index}.pth")
    zoo = load_nfn_zoo(tmp_path)
    assert zoo.dataset["label"] == [4, 9] and zoo.meta["config"]["value_range"] == [-1.0, 1.0]
    rows_cols = coordinate_grid(28, 28).flip(-1)  # NFN feeds (row, column)
    for row in range(2):
        assert torch.allclose(zoo.module(row)(coordinate_grid(28, 28)), sirens[row](rows_cols), atol=1e-6)


def test_generic_folder_and_architecture_mismatch(tmp_path: Path) -> None:
    for i, siren in enumerate(_sirens(2)):
        torch.save(siren.state_dict(), tmp_path / f"inr{i}.pth")
    zoo = load_state_dict_folder(tmp_path)
    assert zoo.dataset["label"] == [-1, -1] and zoo.dataset["image_index"] == [0, 1]
    torch.save(Siren(hidden=(16, 16)).state_dict(), tmp_path / "inr2.pth")
    with pytest.raises(ValueError, match="inr2.pth: weights do not match"):
        load_state_dict_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no files match"):
        load_state_dict_folder(tmp_path, "*.pt")


def test_unexpected_dwsnets_layout_is_named(tmp_path: Path) -> None:
    (tmp_path / "some_run" / "checkpoints").mkdir(parents=True)
    torch.save(_sirens(1)[0].state_dict(), tmp_path / "some_run" / "checkpoints" / "model_final.pth")
    with pytest.raises(ValueError, match="model_final.pth is not laid out"):
        load_dwsnets_zoo(tmp_path)
