"""The ``l2o fit`` subcommand: ``add_parser(subparsers)`` registers it on the ``l2o`` CLI.

    l2o fit inr-classify --zoo ZOO --encoder ng-gnn [--probes 16] [--epochs 50] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from encoders.tasks.models import ENCODERS
from encoders.tasks.tasks import TASKS
from encoders.tasks.trainer import FitConfig

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``fit TASK --zoo PATH --encoder NAME [training options] [--out DIR] [--no-resume]``."""
    parser = subparsers.add_parser(
        "fit", help="train a weight-space model (NG-GNN, NG-T or a baseline) on a zoo",
        description="Train on a zoo folder (see `encoders.zoo`) and write checkpoint.pt and results.json "
        "to --out; an interrupted run resumes from its checkpoint.")
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--zoo", required=True, type=Path, help="zoo folder (make_inr_zoo / make_cnn_zoo)")
    parser.add_argument("--encoder", choices=[*ENCODERS, "stats"], default="ng-gnn")
    for field in fields(FitConfig):
        flag = f"--{field.name.replace('_', '-')}"
        if isinstance(field.default, bool):
            parser.add_argument(flag, action="store_true", help=f"FitConfig.{field.name}")
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/fit/TASK-ENCODER)")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Handler of ``l2o fit``: trains, prints the results and writes them to ``OUT/results.json``."""
    from encoders.tasks.trainer import fit

    config = FitConfig(**{f.name: getattr(args, f.name) for f in fields(FitConfig)})
    out = args.out if args.out is not None else Path("runs") / "fit" / f"{args.task}-{args.encoder}"
    results = fit(args.task, args.encoder, args.zoo, config=config, out=out, resume=not args.no_resume,
                  progress=not args.no_progress)
    results.pop("history", None)
    print(json.dumps(results, indent=2))
    print(f"results written to {out / 'results.json'}")
    return 0
