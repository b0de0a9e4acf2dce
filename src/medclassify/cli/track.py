"""``medclassify track``: finished runs sent to TensorBoard or MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..defaults import TRACKERS
from .common import Command, add_run_argument


def add_options(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "a run folder, or a study folder (every run in its runs/)")
    parser.add_argument("--to", nargs="+", choices=TRACKERS, required=True, help="the trackers to send the records to")


def run(args: argparse.Namespace) -> int:
    from ..training.tracking import replay_study

    sent = replay_study(Path(args.run), args.to)
    print(f"sent {len(sent)} run(s) to {' and '.join(args.to)}: {', '.join(p.name for p in sent)}")
    return 0


COMMAND = Command(
    "send finished runs (a study's or one) to TensorBoard or MLflow from their run folders",
    "examples:\n  medclassify track runs/my-study --to mlflow\n  medclassify track runs/blood28 --to tensorboard mlflow\n",
    add_options,
    run,
)
