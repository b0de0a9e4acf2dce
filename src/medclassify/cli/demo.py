"""``medclassify demo``: the paper's CNN on the bundled synthetic sample, offline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import MedclassifyError
from .common import Command, add_switch, print_results

DEMO_OUT = "runs/demo"


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEMO_OUT, help=f"run folder (default: {DEMO_OUT})")
    parser.add_argument("--data-dir", help="where to write the generated sample (default: the OS cache)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs (default: 10, the paper's)")
    add_switch(parser, "quiet", "no progress bars or epoch lines")


def run(args: argparse.Namespace) -> int:
    from ..config import TrainConfig
    from ..runs import RunDir
    from ..training import train

    if args.epochs < 1:
        raise MedclassifyError(f"--epochs must be >= 1, got {args.epochs}")
    out = Path(args.out)
    config = TrainConfig(
        dataset="synthcells",
        size=28,
        model="paper-cnn",
        out=str(out),
        data_dir=args.data_dir,
        epochs=args.epochs,
        quiet=args.quiet,
        resume=RunDir(out).last_path.is_file(),
    )
    print(
        "medclassify demo: the paper's CNN on 'synthcells', a SYNTHETIC sample of generated cell-like images "
        "(not medical data)",
        file=sys.stderr,
    )
    result = train(config)
    if result.already_complete:
        print(
            f"{result.run_dir} is already complete; nothing was trained or written (remove it to train again)",
            file=sys.stderr,
        )
    print_results(result)
    return 0


COMMAND = Command(
    "train and evaluate the paper's CNN on the bundled synthetic sample (offline; 10-25 s on an idle 2-core machine)",
    "The sample ('synthcells') is synthetic: generated cell-like images, not medical data.\n\nexample:\n  medclassify demo --out runs/demo\n",
    add_options,
    run,
)
