"""The ``l2o zoo`` subcommands: ``add_parser(subparsers)`` registers them on the ``l2o`` CLI.

    l2o zoo inr OUT [--source mnist5k] [--recipe fast|dwsnets] [--copies K [--eval-copies 1]] ...   fit SIRENs per image
    l2o zoo cnn OUT [--source digits] [--architectures 16] ...        train a CNN zoo with checkpoints
    l2o zoo import FOLDER OUT --format dwsnets|nfn                   convert a published SIREN zoo
    l2o zoo info ZOO                                                 summarise a zoo folder

Generation resumes when rerun with the same arguments on the same folder.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter

__all__ = ["add_parser", "run_cnn", "run_import", "run_info", "run_inr"]


def _fraction(item: str) -> tuple[str, float]:
    name, _, value = item.partition("=")
    try:
        return name, float(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"a split fraction looks like train=0.8, got {item!r}") from err


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``zoo {inr,cnn,import,info}`` to ``subparsers``."""
    parser = subparsers.add_parser("zoo", help="generate, import or inspect INR and CNN model zoos",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="zoo_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("out", help="zoo folder (rerun with the same arguments to resume)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--limit", type=int, default=None, help="use LIMIT images (offline: a fixed random subset)")
    common.add_argument("--split-fractions", nargs="+", type=_fraction, metavar="NAME=FRACTION",
                        default=[("train", 0.8), ("val", 0.1), ("test", 0.1)])
    common.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    common.add_argument("--no-progress", action="store_true")

    inr = sub.add_parser("inr", parents=[common], help="fit one SIREN per image (DWSNets conventions by default)")
    inr.add_argument("--source", default="mnist5k", help="mnist5k, digits, mnist, fashion_mnist, cifar10 or a "
                     "datasets.load_dataset name/path")
    inr.add_argument("--image-split", default="train", help="split of a Hugging Face source")
    inr.add_argument("--copies", type=int, default=1, help="SIRENs per image, from different seeds")
    inr.add_argument("--eval-copies", type=int, default=None,
                     help="SIRENs per validation/test image (default: --copies; 1: extra views of the "
                          "training images only)")
    inr.add_argument("--hidden", type=int, nargs="+", default=[32, 32])
    inr.add_argument("--w0", type=float, default=30.0)
    inr.add_argument("--offset", type=float, default=0.5)
    inr.add_argument("--value-range", type=float, nargs=2, default=[0.0, 1.0])
    inr.add_argument("--recipe", choices=["fast", "dwsnets"], default="fast",
                     help="fitting settings: fast (80 Adam steps at 5e-3 from SIREN's init) or dwsnets (the "
                          "DWSNets zoo's init, Adam at 5e-4 for up to 1000 steps, stopping at 40 dB); the flags "
                          "below override them")
    inr.add_argument("--steps", type=int, default=None)
    inr.add_argument("--lr", type=float, default=None)
    inr.add_argument("--target-psnr", type=float, default=None, help="stop each SIREN at this PSNR (dB)")
    inr.add_argument("--batch-size", type=int, default=8, help="SIRENs fitted together per process")
    inr.add_argument("--no-compile", action="store_true", help="skip torch.compile (slower; no compiler needed)")
    inr.add_argument("--shard-size", type=int, default=256)
    inr.set_defaults(handler=run_inr)

    cnn = sub.add_parser("cnn", parents=[common], help="train small CNNs of random architectures, with checkpoints")
    cnn.add_argument("--source", default="digits", help="digits, mnist5k or another image source")
    cnn.add_argument("--architectures", type=int, default=16)
    cnn.add_argument("--models-per-arch", type=int, default=1)
    cnn.add_argument("--checkpoints", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16], help="epochs to record")
    cnn.add_argument("--train-fractions", type=float, nargs="+", default=[1.0],
                     help="each model trains on one of these shares of the training images (spreads accuracies)")
    cnn.add_argument("--image-size", type=int, default=None, help="resize the images (e.g. 14 for MNIST at 14x14)")
    cnn.add_argument("--test-fraction", type=float, default=0.2)
    cnn.add_argument("--shard-size", type=int, default=8, help="models per shard")
    cnn.set_defaults(handler=run_cnn)

    imp = sub.add_parser("import", help="convert a published SIREN zoo (folder of state dicts) to a zoo folder")
    imp.add_argument("folder", help="the unpacked published zoo")
    imp.add_argument("out", help="zoo folder to write")
    imp.add_argument("--format", choices=["dwsnets", "nfn"], required=True)
    imp.add_argument("--prefix", default="randinit_test", help="NFN folder prefix")
    imp.add_argument("--image-shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    imp.set_defaults(handler=run_import)

    info = sub.add_parser("info", help="summarise a zoo folder (refuses partial or corrupt zoos)")
    info.add_argument("zoo")
    info.set_defaults(handler=run_info)
    return parser


def run_inr(args: argparse.Namespace) -> int:
    """Handler of ``l2o zoo inr``."""
    from encoders.zoo.inr_fit import RECIPES, InrConfig
    from encoders.zoo.inr_zoo import make_inr_zoo

    given = {k: getattr(args, k) for k in ("steps", "lr", "target_psnr") if getattr(args, k) is not None}
    config = InrConfig(hidden=tuple(args.hidden), w0=args.w0, offset=args.offset, value_range=tuple(args.value_range),
                       batch_size=args.batch_size, compile=not args.no_compile, **{**RECIPES[args.recipe], **given})
    zoo = make_inr_zoo(args.out, args.source, config=config, image_split=args.image_split, limit=args.limit,
                       copies=args.copies, eval_copies=args.eval_copies,
                       seed=args.seed, split_fractions=dict(args.split_fractions),
                       shard_size=args.shard_size, workers=args.workers, progress=not args.no_progress)
    print(f"INR zoo of {len(zoo)} SIRENs in {args.out}")
    return run_info(argparse.Namespace(zoo=args.out))


def run_cnn(args: argparse.Namespace) -> int:
    """Handler of ``l2o zoo cnn``."""
    from encoders.zoo.cnn_zoo import make_cnn_zoo

    zoo = make_cnn_zoo(args.out, args.source, architectures=args.architectures, models_per_arch=args.models_per_arch,
                       checkpoints=args.checkpoints, train_fractions=args.train_fractions, seed=args.seed,
                       limit=args.limit, image_size=args.image_size, test_fraction=args.test_fraction,
                       split_fractions=dict(args.split_fractions), shard_size=args.shard_size,
                       workers=args.workers, progress=not args.no_progress)
    print(f"CNN zoo of {len(zoo)} checkpoints in {args.out}")
    return run_info(argparse.Namespace(zoo=args.out))


def run_import(args: argparse.Namespace) -> int:
    """Handler of ``l2o zoo import``."""
    from encoders.zoo.public import load_dwsnets_zoo, load_nfn_zoo

    shape = tuple(args.image_shape)
    if args.format == "dwsnets":
        zoo = load_dwsnets_zoo(args.folder, shape)
    else:
        zoo = load_nfn_zoo(args.folder, args.prefix, shape)
    zoo.save(args.out)
    print(f"imported {len(zoo)} SIRENs from {args.folder} into {args.out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Handler of ``l2o zoo info``."""
    from encoders.zoo.zoo import load_zoo

    zoo = load_zoo(args.zoo)
    data = zoo.dataset
    print(f"{zoo.kind} zoo: {len(zoo)} records, splits {dict(sorted(Counter(data['split']).items()))}")
    if zoo.kind == "inr":
        print(f"SIREN {zoo.meta['siren']}, images {zoo.meta['image_shape']}")
        psnr = sorted(p for p in data["psnr"] if p == p)
        if psnr:
            print(f"PSNR dB: median {psnr[len(psnr) // 2]:.2f}, min {psnr[0]:.2f}, max {psnr[-1]:.2f}")
        stds = {k: f"{float(v.std()):.3f}" for k, v in zoo.stacked_params().items()}
        print(f"parameter std per tensor: {stds} (the DWSNets MNIST zoo: weights 0.063 / 0.018 / 0.118, "
              "biases 0.021 / 0.011 / 0.100)")
    else:
        print(f"{len(set(data['arch_id']))} architectures, {len(set(data['model_id']))} models, "
              f"checkpoints at epochs {sorted(set(data['epoch']))}")
        accs = sorted(data["test_acc"])
        decile = lambda q: accs[min(len(accs) - 1, int(q * len(accs)))]  # noqa: E731
        print(f"test accuracy: median {decile(0.5):.3f}, 10th-90th percentile {decile(0.1):.3f}-{decile(0.9):.3f}, "
              f"min {accs[0]:.3f}, max {accs[-1]:.3f}")
    return 0
