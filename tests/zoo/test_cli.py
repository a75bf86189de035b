"""The ``l2o zoo`` subcommands, driven through their argparse parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from encoders.zoo import Siren, load_zoo
from encoders.zoo.cli import add_parser


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="l2o")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_inr_cnn_info_and_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--workers", "1", "--no-progress", "--limit", "30"]
    assert _run(["zoo", "inr", str(tmp_path / "inr"), "--source", "digits", "--steps", "3", "--no-compile",
                 "--hidden", "8", "8", *common]) == 0
    inr = load_zoo(tmp_path / "inr")
    assert len(inr) == 30 and inr.meta["siren"]["hidden"] == [8, 8]
    assert _run(["zoo", "cnn", str(tmp_path / "cnn"), "--source", "digits", "--architectures", "2",
                 "--checkpoints", "0", "--split-fractions", "train=0.5", "test=0.5", *common]) == 0
    assert sorted(set(load_zoo(tmp_path / "cnn").dataset["split"])) == ["test", "train"]
    (tmp_path / "dws" / "mnist_png_testing_3_0" / "checkpoints").mkdir(parents=True)
    state = {k.replace("layers.", "seq."): v for k, v in Siren().state_dict().items()}
    torch.save(state, tmp_path / "dws" / "mnist_png_testing_3_0" / "checkpoints" / "model_final.pth")
    assert _run(["zoo", "import", str(tmp_path / "dws"), str(tmp_path / "imported"), "--format", "dwsnets"]) == 0
    assert load_zoo(tmp_path / "imported").dataset["label"] == [3]
    assert _run(["zoo", "info", str(tmp_path / "cnn")]) == 0
    out = capsys.readouterr().out
    assert "inr zoo: 30 records" in out and "cnn zoo: 2 records" in out and "2 architectures" in out


def test_bad_split_fraction_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        _run(["zoo", "inr", "out", "--split-fractions", "train:0.8"])
