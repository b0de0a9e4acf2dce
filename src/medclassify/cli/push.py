"""``medclassify push``: a run uploaded to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import Command, add_run_argument, add_switch


def add_options(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "a finished run folder")
    parser.add_argument(
        "--repo", required=True, metavar="OWNER/NAME", help="the Hub model repository (created if needed)"
    )
    add_switch(parser, "private", "create the repository as private")
    parser.add_argument("--token", help="a Hub access token (default: HF_TOKEN or 'hf auth login')")


def run(args: argparse.Namespace) -> int:
    from ..inference.hub import push_to_hub

    url = push_to_hub(args.run, args.repo, args.private, args.token)
    print(f"uploaded {Path(args.run) / 'hub'} to {args.repo}: {url}")
    return 0


COMMAND = Command(
    "upload a run to the Hugging Face Hub as a model repository (export --format hub, then upload)",
    "example:\n  medclassify push runs/blood28 --repo alice/bloodmnist-cnn\n\nNeeds pip install 'medclassify[hub]'.\n",
    add_options,
    run,
)
