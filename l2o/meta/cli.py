"""The ``l2o meta-train`` subcommand: ``add_parser(subparsers)`` registers it on the ``l2o`` CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``meta-train --config FILE.yaml [--rule NAME] [--rule-option KEY=VALUE ...] [--run-dir DIR]
    [--no-resume]`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "meta-train",
        help="meta-train an update rule from a YAML config (resumes from the run folder)",
        description="Meta-train an update rule. Launch with `accelerate launch` or `torchrun` to split the "
        "task slots over several processes.",
    )
    parser.add_argument("--config", required=True, type=Path, help="YAML config (see l2o.meta.config)")
    parser.add_argument("--rule", default=None,
                        help="train this registered rule (at its defaults) instead of the config's, with the same "
                        "recipe: e.g. a graph rule's per-tensor twin, for the ablation")
    parser.add_argument("--rule-option", action="append", default=[], metavar="KEY=VALUE",
                        help="set one of the rule's options (VALUE read as YAML), over the config's or, with "
                        "--rule, over that rule's defaults; repeatable: e.g. --rule-option orthogonal=true")
    parser.add_argument("--rule-init", default=None, metavar="RULE",
                        help="start from this shipped rule or rule folder (its meta-parameters and options), over "
                        "the config's rule.init: e.g. --rule tensor-stepsize --rule-init tensor-stepsize-v2")
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder (default: runs/<config file name>)")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Handler of ``l2o meta-train``."""
    import dataclasses

    import yaml

    from l2o.meta.config import RuleConfig, load_config
    from l2o.meta.run import meta_train

    run_dir = args.run_dir if args.run_dir is not None else Path("runs") / args.config.stem
    config = load_config(args.config)
    rule = config.rule if args.rule is None else RuleConfig(name=args.rule)
    options = dict(rule.options)
    for item in args.rule_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--rule-option expects KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value)
    if args.rule_init is not None:
        rule = dataclasses.replace(rule, init=args.rule_init)
    if args.rule is not None or args.rule_option or args.rule_init is not None:
        config = dataclasses.replace(config, rule=dataclasses.replace(rule, options=options)).validate()
    meta_train(config, run_dir, resume=not args.no_resume)
    print(f"meta-trained rule written to {run_dir / 'rule'}")
    return 0
