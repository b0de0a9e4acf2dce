"""``medclassify robustness``: a run's model on corrupted test images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..defaults import CORRUPTION_SETS, SEVERITIES, CorruptionSet
from .common import Command, add_config_options, add_device_option, add_run_argument, add_run_data_option

ROBUSTNESS_EPILOG = """examples:
  medclassify robustness runs/blood28
  medclassify robustness runs/my-xrays --corruptions generic --severities 1 3 5
  medclassify train --dataset bloodmnist --corruptions auto            # the same, right after training

Each test image is classified clean and under each corruption at each severity (MedMNIST-C's
families: digital, noise, blur, colour, gamma; its parameters for the dataset, blur widths scaled
from 224 px to the image). The table has ACC, AUC, macro-F1, ECE and, for a model calibrated with
--conformal, the coverage and size of its prediction sets. mCE is the error averaged over severities
and corruptions; relative mCE subtracts the clean error. The clean figures here come from the bundle
as predict applies it (no test-time flips), so they can differ slightly from metrics.json's test.
"""


def add_options(parser: argparse.ArgumentParser) -> None:
    from ..config import PostTrainingConfig

    add_run_argument(parser, "a finished run folder")
    add_config_options(
        parser,
        ["corruptions"],
        PostTrainingConfig,
        defaults={"corruptions": CORRUPTION_SETS[0]},
        choices={"corruptions": CORRUPTION_SETS},
    )
    parser.add_argument(
        "--severities",
        type=int,
        nargs="+",
        default=list(SEVERITIES),
        metavar="S",
        help="severities to test, from 1 to 5 (default: all)",
    )
    parser.add_argument("--seed", type=int, help="seed of the random corruptions (default: the run's)")
    add_run_data_option(parser)
    add_device_option(parser)


def run(args: argparse.Namespace) -> int:
    from ..runs import ROBUSTNESS_FIGURE, ROBUSTNESS_TABLE, robustness_run

    corruptions: CorruptionSet = getattr(args, "corruptions", CORRUPTION_SETS[0])
    report = robustness_run(args.run, corruptions, args.data_dir, args.device, tuple(args.severities), args.seed)
    for line in report.lines():
        print(line)
    run = Path(args.run)
    print(
        f"written: {run / ROBUSTNESS_TABLE}, {run / (ROBUSTNESS_FIGURE + '.png')} and the 'robustness' record "
        f"of {run / 'metrics.json'}"
    )
    return 0


COMMAND = Command(
    "test a run's model on its test split under realistic corruptions (MedMNIST-C) at five severities",
    ROBUSTNESS_EPILOG,
    add_options,
    run,
)
