"""``medclassify models``: the registered models and their sizes."""

from __future__ import annotations

import argparse

from ..errors import MedclassifyError
from .common import Command

MODEL_SIZES = (8, 1024)  # what image folders accept; MedMNIST sizes lie inside


MAX_CLASSES = 10_000


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        type=int,
        default=28,
        help=f"input size for the parameter count, {MODEL_SIZES[0]} to {MODEL_SIZES[1]} (default: 28)",
    )
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3, help="input channels (default: 3)")
    parser.add_argument("--classes", type=int, default=8, help="number of classes, at least 2 (default: 8)")


def run(args: argparse.Namespace) -> int:
    from ..models import available_models, count_parameters, create_model

    if not MODEL_SIZES[0] <= args.size <= MODEL_SIZES[1]:
        raise MedclassifyError(f"--size must be from {MODEL_SIZES[0]} to {MODEL_SIZES[1]} pixels, got {args.size}")
    if not 2 <= args.classes <= MAX_CLASSES:
        raise MedclassifyError(f"--classes must be from 2 to {MAX_CLASSES:,}, got {args.classes}")
    print(
        f"{'model':<20}{'parameters':>12}  description   ({args.channels} channel(s), {args.classes} classes, {args.size} px)"
    )
    for name, entry in available_models().items():
        params = count_parameters(create_model(name, args.channels, args.classes, args.size))
        print(
            f"{name:<20}{params:>12,}  {entry.description}"
            + ("  [--pretrained: ImageNet weights available]" if entry.pretrained else "")
        )
    return 0


COMMAND = Command(
    "list the registered models and their parameter counts",
    "example:\n  medclassify models --size 64 --channels 1 --classes 11\n",
    add_options,
    run,
)
