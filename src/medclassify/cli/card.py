"""``medclassify card``: a run's model card written again."""

from __future__ import annotations

import argparse

from .common import Command, add_run_argument


def add_options(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "a finished run folder")


def run(args: argparse.Namespace) -> int:
    from ..runs import write_model_card

    print(f"wrote {write_model_card(args.run)}")
    return 0


COMMAND = Command(
    "write a run's MODEL_CARD.md again (Hugging Face model-card format) from its records",
    "example:\n  medclassify card runs/blood28\n\nEvery run writes it after training; calibrate and robustness rewrite it.\n",
    add_options,
    run,
)
