"""The ``medclassify`` command: a thin layer that fills the library's config objects and calls it.

Each command lives in its own module (its options, examples and what it runs); this module puts
them under one parser, shows the library's errors as one line, and sets up logging and warnings."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings

from .. import __version__
from ..errors import MedclassifyError
from . import (
    cache,
    calibrate,
    card,
    datasets,
    demo,
    ensemble,
    evaluate,
    explain,
    export,
    models,
    predict,
    published,
    push,
    recipes,
    robustness,
    serve,
    study,
    track,
    train,
    tune,
)
from .common import Command, Parser, formatter, in_options

MAIN_EXAMPLES = """examples:
  medclassify demo                                    # offline, on the bundled synthetic sample
  medclassify datasets
  medclassify train --dataset bloodmnist --size 28
  medclassify evaluate runs/bloodmnist_28_paper-cnn_seed0
  medclassify predict runs/demo image.png
  medclassify explain runs/demo image.png
  medclassify export runs/demo

'medclassify COMMAND --help' shows each command's options.
"""


# name: (help, epilog, options, run)
# name: the command; its module holds its options, examples and what it runs (as pip's commands do)
COMMANDS: dict[str, Command] = {
    "demo": demo.COMMAND,
    "train": train.COMMAND,
    "evaluate": evaluate.COMMAND,
    "predict": predict.COMMAND,
    "explain": explain.COMMAND,
    "export": export.COMMAND,
    "calibrate": calibrate.COMMAND,
    "robustness": robustness.COMMAND,
    "tune": tune.COMMAND,
    "track": track.COMMAND,
    "card": card.COMMAND,
    "push": push.COMMAND,
    "ensemble": ensemble.COMMAND,
    "published": published.COMMAND,
    "serve": serve.COMMAND,
    "datasets": datasets.COMMAND,
    "cache": cache.COMMAND,
    "models": models.COMMAND,
    "recipes": recipes.COMMAND,
    "run": study.RUN,
    "reproduce": study.REPRODUCE,
}


def build_parser(only: str | None = None) -> Parser:
    """Every command; with ``only``, the options of that command alone, so that a command such as
    ``predict`` starts without importing what the others need (torch for ``train``'s choices)."""
    parser = Parser(
        prog="medclassify",
        description="Train, evaluate, compare, explain and use CNNs for medical image classification.",
        formatter_class=formatter,
        epilog=MAIN_EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"medclassify {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(
            name, help=command.help, description=command.help, epilog=command.epilog, formatter_class=formatter
        )
        parser.commands[name] = sub
        if only in (None, name):
            if command.add_options is not None:
                command.add_options(sub)
            sub.add_argument("--verbose", action="store_true", help="log more detail (default: off)")
            sub.add_argument(
                "--debug", action="store_true", help="show the full traceback behind an error (default: off)"
            )
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (it may be replaced after main())."""

    medclassify_cli = True  # marks the handler main() added, to replace it when main() runs again

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _configure_logging(args: argparse.Namespace) -> None:
    """The library logs to ``logging.getLogger("medclassify...")``; the command shows its records on
    stderr: INFO by default, WARNING with --quiet, DEBUG with --verbose."""
    level = logging.DEBUG if args.verbose else logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logger = logging.getLogger("medclassify")
    for handler in [h for h in logger.handlers if getattr(h, "medclassify_cli", False)]:
        logger.removeHandler(handler)  # main() may run more than once in a process (tests, notebooks)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"medclassify: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    if not argv:  # a bare 'medclassify' shows what it can do
        parser.print_help()
        return 2
    args = parser.parse_args(argv)
    args.argv = argv
    warnings.showwarning = _one_line_warning
    _configure_logging(args)
    try:
        code = COMMANDS[args.command].run(args)
        sys.stdout.flush()  # here, so that a reader who left (a closed pipe) is caught below
        return code
    except MedclassifyError as exc:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one message, not one per process
            if args.debug:
                traceback.print_exc(file=sys.stderr)
            print(
                f"medclassify {args.command}: error: {in_options(exc, parser.commands[args.command])}", file=sys.stderr
            )
        return 2
    except BrokenPipeError:  # e.g. 'medclassify datasets | head': the reader left, which is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
