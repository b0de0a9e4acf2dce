"""``medclassify ensemble``: several trained models averaged into one bundle."""

from __future__ import annotations

import argparse

from .common import Command, add_run_argument

ENSEMBLE_EPILOG = """examples:
  medclassify ensemble runs/blood_seed0 runs/blood_seed1 runs/blood_seed2 --out blood_ensemble.pt
  medclassify predict blood_ensemble.pt cell.png
  medclassify export blood_ensemble.pt                 # one ONNX graph holding every member

The ensemble's probabilities are the mean of its members' (each after its own temperature when the
run was calibrated). Members must share the input (size, channels, normalisation) and the data.
"""


def add_options(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "run folders (their best.pt) or .pt bundles, at least two", many=True)
    parser.add_argument("--out", metavar="FILE.pt", required=True, help="the ensemble bundle to write")


def run(args: argparse.Namespace) -> int:
    from ..runs import make_ensemble

    result = make_ensemble(args.runs, args.out)
    print(
        f"ensemble of {len(result.members)} models ({result.parameters:,} parameters) written to {result.path}; "
        "predict, serve, explain and export use it like any bundle"
    )
    return 0


COMMAND = Command(
    "average several trained models (e.g. seeds) into one bundle",
    ENSEMBLE_EPILOG,
    add_options,
    run,
)
