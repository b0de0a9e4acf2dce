"""``medclassify explain``: heatmaps for images, a grid over a split, or how faithful each method is."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..defaults import DEFAULT_EXPLAIN_METHOD, EVALUATION_IMAGES, EXPLAIN_METHODS, GRID_PER_CLASS
from ..errors import MedclassifyError
from .common import Command, add_device_option, add_run_argument, add_run_data_option, report_skipped

EXPLAIN_EPILOG = """examples:
  medclassify explain runs/demo cell.png --out cams/            # overlay PNG per image
  medclassify explain runs/demo cell.png --target 3 --layer features.3
  medclassify explain runs/demo cell.png --method all            # one panel per method
  medclassify explain runs/demo                                  # grid of right and wrong test images
  medclassify explain runs/demo --evaluate                       # faithfulness and sanity of every method

methods: gradcam, gradcam++, scorecam, eigencam, layercam (grad-cam: a layer's feature map, by default the
deepest at least 7 pixels wide), integrated-gradients, occlusion (captum: the pixels themselves).
--evaluate writes RUN/explain/evaluation.json and evaluation.png: deletion and insertion areas beside a
random map's, ROAD, the model-randomisation sanity check, Integrated Gradients' completeness, the cost per
image, each with a 95 % bootstrap interval over the images.
"""


def add_options(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "a run folder or a .pt bundle (the methods need the PyTorch model)")
    parser.add_argument(
        "images", metavar="IMAGE", nargs="*", help="image files or folders; none: a grid over the run's --split"
    )
    parser.add_argument("--out", metavar="DIR", help="folder for the PNG files (default: RUN/explain)")
    parser.add_argument(
        "--target", metavar="CLASS", help="the class to explain, by name or index (default: the predicted one)"
    )
    parser.add_argument(
        "--method",
        default=DEFAULT_EXPLAIN_METHOD,
        choices=(*EXPLAIN_METHODS, "all"),
        help="attribution method; all: one panel per method (default: %(default)s)",
    )
    parser.add_argument(
        "--layer",
        metavar="NAME",
        help="a CAM's target layer, a dotted module name (default: the deepest whose feature map is at least "
        "7 pixels wide)",
    )
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="measure how faithful each method's maps are on the run's test split, and the sanity check (default: off)",
    )
    parser.add_argument(
        "--images",
        dest="evaluation_images",
        type=int,
        default=EVALUATION_IMAGES,
        metavar="N",
        help="with --evaluate: class-stratified test images (default: %(default)s)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=EXPLAIN_METHODS,
        metavar="METHOD",
        help="with --evaluate: the methods to measure (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="with --evaluate: the sample's seed (default: 0)")
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
    from ..explain import evaluate_explanations, explain_images, explain_split, write_overlays
    from ..inference.predictor import Predictor

    source = Path(args.run)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / "explain"
    if args.evaluate:
        if args.images:
            raise MedclassifyError("--evaluate measures the run's test images: give it without IMAGE")
        if not source.is_dir():
            raise MedclassifyError(f"{source}: --evaluate needs the run folder (its test split)")
        if args.evaluation_images < 1:
            raise MedclassifyError(f"--images must be a whole number >= 1, got {args.evaluation_images}")
        evaluation = evaluate_explanations(
            source, args.evaluation_images, args.methods, args.seed, args.layer, args.data_dir, out, args.device
        )
        print("\n".join(evaluation.lines()))
        print(f"wrote {', '.join(evaluation.files)}")
        return 0
    if not args.images:
        if args.per_class < 1:
            raise MedclassifyError(f"--per-class must be >= 1, got {args.per_class}")
        if not source.is_dir():
            raise MedclassifyError(
                f"{source}: the grid over a split needs the run folder; or name IMAGE files to explain"
            )
        if args.method == "all":
            raise MedclassifyError("--method all draws one panel per method for IMAGE files; the grid takes one method")
        grid = explain_split(
            source, out, args.split, args.per_class, args.layer, args.data_dir, args.device, args.method
        )
        print(f"wrote {grid}")
        return 0
    predictor = Predictor.from_run(source, device=args.device, backend="torch")
    explanations, skipped = explain_images(predictor, args.images, args.target, args.layer, args.method)
    report_skipped("explain", skipped, len(explanations))
    for explanation, path in zip(explanations, write_overlays(explanations, out)):
        print(f"{explanation.source}: {explanation.class_name} p={explanation.probability:.3f} -> {path}")
    return 0


COMMAND = Command(
    "heatmaps for images (seven methods), a grid of right and wrong test predictions, or how faithful each method is",
    EXPLAIN_EPILOG,
    add_options,
    run,
)
