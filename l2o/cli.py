"""The ``l2o`` command: ``demo`` and the subcommands of the other packages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from l2o.demo import run_demo

    run_demo(args.dataset, args.steps, args.batch_size, args.seed, Path(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l2o", description="Learned optimization with neural graphs.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train an MLP with the pretrained NeuralGraphOpt next to Adam")
    demo.add_argument("--dataset", choices=["mnist5k", "digits"], default="mnist5k")
    demo.add_argument("--steps", type=int, default=500)
    demo.add_argument("--batch-size", type=int, default=128)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="results/demo", help="folder for demo.png and demo.json")
    demo.set_defaults(handler=_demo)
    from l2o.meta.cli import add_parser as add_meta_train

    add_meta_train(sub)
    from encoders.zoo.cli import add_parser as add_zoo

    add_zoo(sub)
    from encoders.tasks.cli import add_parser as add_fit

    add_fit(sub)
    sub.add_parser("bench", help="run the benchmark suite: l2o bench [parts] [--quick] (see l2o bench --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser, shared with python -m benchmarks
        from benchmarks.__main__ import main as run_benchmarks

        return run_benchmarks(argv[1:])
    args = build_parser().parse_args(argv)
    return args.handler(args)
