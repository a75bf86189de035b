"""Run the benchmark suite, or named parts of it, then regenerate docs/results.md.

    python -m benchmarks                      # everything, full sizes
    python -m benchmarks --quick              # everything, minutes
    python -m benchmarks step_overhead l2o_quality --quick

``l2o bench ARGS`` runs this in a subprocess from the source checkout it finds (see ``l2o.cli``):
the library never imports ``benchmarks``, and the wheel does not install it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from pathlib import Path

from benchmarks.report import ORDER, build


def available() -> list[str]:
    return [name for name in ORDER if importlib.util.find_spec(f"benchmarks.{name}") is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help=f"benchmarks to run (default: all of {available()})")
    parser.add_argument("--quick", action="store_true", help="small sizes (the CI smoke test uses this)")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--docs", type=Path, default=None, help="regenerate DOCS/results.md afterwards")
    args = parser.parse_args(argv)
    unknown = set(args.parts) - set(available())
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {available()}")
    for name in args.parts or available():
        module = importlib.import_module(f"benchmarks.{name}")
        module.main([*(["--quick"] if args.quick else []), "--out", str(args.results / name)])
    if args.docs is not None:
        build(args.results, args.docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
