"""The ``l2o`` command: ``demo`` and the subcommands of the other packages.

``l2o bench`` runs the benchmark suite without the library importing it (``benchmarks`` sits
above ``l2o``, and the wheel does not ship it): it looks for a source checkout, a folder holding
``benchmarks/__main__.py``, first next to the imported ``l2o`` package (an editable or source
install), then in the working directory, and runs ``python -m benchmarks ARGS`` from that checkout
in a subprocess (the checkout first on the path; relative paths stay relative to the working
directory). Without a checkout it says where the benchmarks live and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from l2o.demo import run_demo

    run_demo(args.dataset, args.steps, args.batch_size, args.seed, Path(args.out))
    return 0


# python -m benchmarks ARGS with the checkout (argv[1]) first on sys.path, ahead of the working directory
_RUN_BENCHMARKS = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
                   "runpy.run_module('benchmarks', run_name='__main__', alter_sys=True)")


def find_benchmarks(package_dir: str | os.PathLike | None = None,
                    cwd: str | os.PathLike | None = None) -> Path | None:
    """The source checkout holding ``benchmarks/__main__.py``: the parent of the ``l2o`` package
    (``package_dir``, default the imported one), else ``cwd`` (default the working directory); None
    when neither holds it (e.g. ``l2o`` installed from a wheel)."""
    package_dir = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent
    for root in (package_dir.parent, Path(cwd) if cwd is not None else Path.cwd()):
        if (root / "benchmarks" / "__main__.py").is_file():
            return root.resolve()
    return None


def _bench(argv: list[str]) -> int:
    root = find_benchmarks()
    if root is None:
        print("l2o bench: the benchmarks are not installed with the l2o package (found at "
              f"{Path(__file__).resolve().parent}); they live in the source repository. Run them from a "
              "checkout: `pip install -e .` there and call `l2o bench [parts] [--quick]`, or run "
              "`python -m benchmarks [parts] [--quick]` in its root folder.", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-c", _RUN_BENCHMARKS, str(root), *argv])


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
    sub.add_parser("bench", help="run the benchmark suite of a source checkout in a subprocess: "
                                 "l2o bench [parts] [--quick] (see l2o bench --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser, that of python -m benchmarks
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    return args.handler(args)
