"""``medclassify export``: a run's model as ONNX, TorchScript or a Hub folder, checked against PyTorch."""

from __future__ import annotations

import argparse

from ..defaults import EXPORT_FORMATS, PARITY_TOLERANCE
from .common import Command, add_run_argument, add_run_data_option

EXPORT_EPILOG = """examples:
  medclassify export runs/demo                     # runs/demo/model.onnx; predict then uses it
  medclassify export runs/demo --format torchscript --out demo.ts

The logits of the exported model are compared with PyTorch's on the run's test split (random images
when the data are not at hand); the file is written only when they agree within --tolerance.
"""


def add_options(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "a run folder (its best.pt) or a .pt bundle")
    parser.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default=EXPORT_FORMATS[0],
        help="file format, or hub: a Hugging Face Hub model folder (config.json, model.safetensors, "
        "preprocessor_config.json, the model card as README.md) (default: %(default)s)",
    )
    parser.add_argument(
        "--out", metavar="FILE", help="output file or folder (default: RUN/model.onnx, RUN/model.ts or RUN/hub)"
    )
    add_run_data_option(parser)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=PARITY_TOLERANCE,
        help="largest allowed logit difference to PyTorch (default: %(default)g)",
    )


def run(args: argparse.Namespace) -> int:
    from ..inference import export_model

    result = export_model(args.run, args.out, args.format, args.data_dir, args.tolerance)
    what = f"{result.path}/ ({', '.join(result.files)})" if result.format == "hub" else str(result.path)
    print(
        f"wrote {what} ({result.format}, {result.bytes / 1e6:.2f} MB); largest logit difference to PyTorch "
        f"{result.max_abs_diff:.2e} over {result.parity_images} images of the {result.parity_data}"
    )
    return 0


COMMAND = Command(
    "export a run's model to ONNX or TorchScript, checked against PyTorch",
    EXPORT_EPILOG,
    add_options,
    run,
)
