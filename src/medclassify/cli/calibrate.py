"""``medclassify calibrate``: temperature, operating point and conformal sets fitted on a run's validation split."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import Command, add_config_options, add_device_option, add_run_argument, add_run_data_option, config_values

CALIBRATE_EPILOG = """examples:
  medclassify calibrate runs/blood28
  medclassify train --dataset bloodmnist --calibration temperature       # the same, right after training
  medclassify calibrate runs/pneumonia28 --threshold sensitivity=0.95  # and a screening operating point
  medclassify calibrate runs/blood28 --calibration none --threshold youden --positive-class lymphocyte
  medclassify calibrate runs/blood28 --conformal 0.1                   # 90% prediction sets

A temperature T is fitted on the validation split (minimum negative log-likelihood) and the logits are
divided by it from then on: the class decisions stay, the probabilities say how often the model is right.
With --conformal, each image also gets a set of classes that holds its true class with the chosen
probability, for images like the validation ones (split conformal prediction, calibrated on validation).
Export again afterwards: the exported graph holds T and its metadata the conformal thresholds.
"""


# what calibrate fits when it is given no option: a temperature (train fits nothing unless asked)
DEFAULTS = {"calibration": "temperature"}
OPTIONS = ["calibration", "threshold", "positive_class", "conformal", "conformal_score", "mondrian"]


def add_options(parser: argparse.ArgumentParser) -> None:
    from ..config import PostTrainingConfig

    add_run_argument(parser, "a finished run folder")
    add_config_options(parser, OPTIONS, PostTrainingConfig, DEFAULTS)
    add_run_data_option(parser)
    add_device_option(parser)


def run(args: argparse.Namespace) -> int:
    from ..config import PostTrainingConfig
    from ..runs import calibrate_run

    settings = PostTrainingConfig(**{**DEFAULTS, **config_values(args, PostTrainingConfig)})
    result = calibrate_run(args.run, settings, args.data_dir, args.device)
    for line in result.lines():
        print(line)
    print(
        f"stored in {Path(args.run) / 'best.pt'} (predict, serve, explain and export apply it) and "
        f"{Path(args.run) / 'metrics.json'}"
    )
    return 0


COMMAND = Command(
    "fit temperature scaling on a run's validation split and store it in its bundle",
    CALIBRATE_EPILOG,
    add_options,
    run,
)
