"""``medclassify explain``: Grad-CAM heatmaps for images, or a grid over a split."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..defaults import GRID_PER_CLASS
from ..errors import MedclassifyError
from .common import Command, add_device_option, add_run_argument, add_run_data_option, report_skipped

EXPLAIN_EPILOG = """examples:
  medclassify explain runs/demo cell.png --out cams/            # overlay PNG per image
  medclassify explain runs/demo cell.png --target 3 --layer features.3
  medclassify explain runs/demo                                  # grid of right and wrong test images
"""


def add_options(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "a run folder or a .pt bundle (Grad-CAM needs the PyTorch model)")
    parser.add_argument(
        "images", metavar="IMAGE", nargs="*", help="image files or folders; none: a grid over the run's --split"
    )
    parser.add_argument("--out", metavar="DIR", help="folder for the PNG files (default: RUN/explain)")
    parser.add_argument(
        "--target", metavar="CLASS", help="the class to explain, by name or index (default: the predicted one)"
    )
    parser.add_argument(
        "--layer",
        metavar="NAME",
        help="target layer, a dotted module name (default: the model's last convolutional block)",
    )
    parser.add_argument(
        "--split", choices=("test", "val"), default="test", help="split for the grid figure (default: test)"
    )
    parser.add_argument(
        "--per-class",
        type=int,
        default=GRID_PER_CLASS,
        help="correct and wrong examples per class in the grid (default: %(default)s)",
    )
    add_run_data_option(parser)
    add_device_option(parser)


def run(args: argparse.Namespace) -> int:
    from ..explain import explain_images, explain_split, write_overlays
    from ..inference.predictor import Predictor

    source = Path(args.run)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / "explain"
    if not args.images:
        if args.per_class < 1:
            raise MedclassifyError(f"--per-class must be >= 1, got {args.per_class}")
        if not source.is_dir():
            raise MedclassifyError(
                f"{source}: the grid over a split needs the run folder; or name IMAGE files to explain"
            )
        print(f"wrote {explain_split(source, out, args.split, args.per_class, args.layer, args.data_dir, args.device)}")
        return 0
    predictor = Predictor.from_run(source, device=args.device, backend="torch")
    explanations, skipped = explain_images(predictor, args.images, args.target, args.layer)
    report_skipped("explain", skipped, len(explanations))
    for explanation, path in zip(explanations, write_overlays(explanations, out)):
        print(f"{explanation.source}: {explanation.class_name} p={explanation.probability:.3f} -> {path}")
    return 0


COMMAND = Command(
    "Grad-CAM heatmaps for images, or a grid of right and wrong test predictions",
    EXPLAIN_EPILOG,
    add_options,
    run,
)
