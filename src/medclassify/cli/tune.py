"""``medclassify tune``: a hyper-parameter search."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import Command, add_parallel_options, add_switch, check_parallel_options


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("search", metavar="SEARCH_YAML", help="the search: base config, space, metric, budget")
    parser.add_argument("--out", help="the search folder (default: runs/NAME, NAME from the search file)")
    parser.add_argument("--data-dir", help="folder with the dataset files (default: as in the search's base)")
    add_parallel_options(parser, "trials")
    add_switch(parser, "retrain", "retrain the best recipe once and test it", default=True)
    add_switch(parser, "quiet", "no progress lines")


def run(args: argparse.Namespace) -> int:
    from ..config import parse_overrides
    from ..experiments.tune import Search, run_search, summary

    check_parallel_options(args)
    search = Search.from_yaml(args.search, parse_overrides(args.set))
    out = Path(args.out or Path("runs") / search.name)
    try:
        result = run_search(
            search, out, args.data_dir, args.workers, args.retrain, args.quiet, args.backend, args.address
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted; the trials so far are kept in {out} - run the same command to continue", file=sys.stderr)
        return 130
    print(summary(result, search.metric))
    print(f"written into {out}: " + ", ".join(p.name for p in result.files))
    return 0


COMMAND = Command(
    "search hyper-parameters with Optuna (TPE, pruning), each trial a run; resumable",
    "examples:\n  medclassify tune search.yaml --data-dir ../shared/data\n  medclassify tune search.yaml --workers 2\n\n"
    "Running the same command again continues the search (its state: TUNE/optuna.db).\n"
    "The best configuration becomes TUNE/best.yaml, retrained once and tested: --recipe TUNE/best.yaml.\n",
    add_options,
    run,
)
