"""``medclassify export``: a run's model as ONNX, TorchScript or a Hub folder, checked against PyTorch."""

from __future__ import annotations

import argparse

from ..defaults import EXPORT_FORMATS, PARITY_TOLERANCE
from .common import Command, add_run_argument, add_run_data_option

EXPORT_EPILOG = """examples:
  medclassify export runs/demo                     # runs/demo/model.onnx; predict then uses it
  medclassify export runs/demo --format torchscript --out demo.ts
  medclassify export runs/demo --quantize int8     # runs/demo/model.int8.onnx, if it keeps the accuracy
  medclassify export runs/demo --format edge --out demo-edge   # a folder that runs without PyTorch
  medclassify export runs/demo --format executorch [--quantize int8]   # runs/demo/model.pte (model.int8.pte)

The logits of the exported model are compared with PyTorch's on the run's test split (random images
when the data are not at hand); the file is written only when they agree within --tolerance. An int8
model (and an ExecuTorch program, run by ExecuTorch's runtime) is written only when its test accuracy
is within --max-drop points of the float32 model's; int8 is calibrated on the run's training split.
"""


def add_quantize_options(parser: argparse.ArgumentParser) -> None:
    from ..inference.quantize import CALIBRATION_METHODS, DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_DROP

    parser.add_argument(
        "--quantize",
        choices=("int8",),
        help="also write an int8 ONNX model (ONNX Runtime static quantization, QDQ, per-channel weights) "
        "as RUN/model.int8.onnx; with --format executorch, RUN/model.int8.pte (PT2E, XNNPACK quantizer) (default: none)",
    )
    parser.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        default=CALIBRATION_METHODS[0],
        help="with --quantize int8 to ONNX: how the activation ranges are calibrated (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="with --quantize: training images for the calibration, drawn class by class (default: %(default)s)",
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        default=DEFAULT_MAX_DROP,
        help="with --quantize or --format executorch: the largest drop in test accuracy allowed, in percentage "
        "points (default: %(default)g)",
    )


def add_options(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "a run folder (its best.pt) or a .pt bundle")
    parser.add_argument(
        "--format",
        choices=(*EXPORT_FORMATS, "edge", "executorch"),
        default=EXPORT_FORMATS[0],
        help="file format; hub: a Hugging Face Hub model folder (config.json, model.safetensors, "
        "preprocessor_config.json, the model card as README.md); edge: a folder for a small device (the int8 "
        "model, model.json, a classify.py that needs only numpy, Pillow and onnxruntime, a README); executorch: "
        "RUN/model.pte for ExecuTorch (XNNPACK delegate), run on the test split behind the accuracy gate "
        "(default: %(default)s)",
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
    add_quantize_options(parser)


def run(args: argparse.Namespace) -> int:
    from ..errors import MedclassifyError
    from ..inference import export_model, quantize_run

    if args.format == "edge":
        from ..inference.edge import export_edge

        if not args.out:
            raise MedclassifyError("--format edge needs --out DIR, the folder to write")
        edge = export_edge(args.run, args.out, args.data_dir, args.calibration_method, args.max_drop)
        print(
            f"wrote {edge.path}/ ({', '.join(edge.files)}); one image on one thread: {edge.latency_ms_p50:.2f} ms "
            f"(median), {edge.latency_ms_p95:.2f} ms (95th percentile)"
        )
        return 0
    if args.format == "executorch":
        from ..inference.pte import export_executorch

        if args.out:
            raise MedclassifyError(
                "--format executorch writes RUN/model.pte (RUN/model.int8.pte): give it without --out"
            )
        program = export_executorch(args.run, args.quantize, args.max_drop, args.calibration_images, args.data_dir)
        print("\n".join(program.lines()))
        return 0
    if args.quantize:
        if args.format != "onnx" or args.out:
            raise MedclassifyError("--quantize int8 writes RUN/model.int8.onnx: give it without --format and --out")
        quantized = quantize_run(
            args.run, args.calibration_method, args.max_drop, args.calibration_images, args.data_dir
        )
        print("\n".join(quantized.lines()))
        return 0

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
