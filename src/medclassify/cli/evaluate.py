"""``medclassify evaluate``: a saved run evaluated again."""

from __future__ import annotations

import argparse

from .common import Command, add_device_option, add_run_argument, add_run_data_option

EVALUATE_EPILOG = (
    "examples:\n  medclassify evaluate runs/bloodmnist_28_paper-cnn_seed0\n  medclassify evaluate runs/demo --checkpoint last\n"
    "  medclassify evaluate runs/demo --model model.int8.onnx   # an export, through its own runtime\n"
)


def add_options(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "a run folder written by 'medclassify train' (an interrupted one too: --checkpoint last)")
    parser.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="which checkpoint to evaluate (default: best)"
    )
    parser.add_argument(
        "--model",
        metavar="FILE",
        help="evaluate a file 'medclassify export' wrote in the run (model.onnx, model.int8.onnx, model.pte, "
        "model.int8.pte) with its own runtime, into metrics_FILE.json and predictions_FILE.csv (default: the checkpoint)",
    )
    add_run_data_option(parser)
    add_device_option(parser)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import summary_line
    from ..runs import evaluate_run

    if args.model:
        from ..inference.evaluate_export import evaluate_export

        result = evaluate_export(args.run, args.model, args.data_dir)
    else:
        result = evaluate_run(args.run, checkpoint=args.checkpoint, data_dir=args.data_dir, device=args.device)
    print(summary_line("val ", result.val))
    print(summary_line("test", result.test))
    print(f"wrote {' and '.join(map(str, result.files))}")
    return 0


COMMAND = Command(
    "re-evaluate a saved run",
    EVALUATE_EPILOG,
    add_options,
    run,
)
