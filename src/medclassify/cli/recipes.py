"""``medclassify recipes``: the named training recipes."""

from __future__ import annotations

import argparse

from .common import Command


def run(args: argparse.Namespace) -> int:
    from ..config import available_recipes, load_recipe

    for name, path in available_recipes().items():
        comment = " ".join(line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#"))
        settings = ", ".join(f"{k}={v}" for k, v in load_recipe(name).items())
        print(f"{name}\n  {comment}\n  {settings}\n")
    return 0


COMMAND = Command(
    "list the named training recipes (--recipe NAME)",
    "example:\n  medclassify train --dataset bloodmnist --recipe paper-bn-aug\n",
    None,
    run,
)
