"""``medclassify predict``: new images classified by a run, a bundle or an exported model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..defaults import EXPLAIN_METHODS, PREDICT_BATCH_SIZE
from ..errors import MedclassifyError
from .common import Command, add_device_option, add_run_argument, add_switch, report_skipped

PREDICT_EPILOG = """examples:
  medclassify predict runs/demo cell.png
  medclassify predict runs/blood28 new_images/ --out predictions.csv
  medclassify predict runs/blood28/model.onnx scan.dcm stack.npz --out predictions.json
  medclassify predict runs/blood28 cell.png --explain gradcam    # and runs/blood28/explain/cell_gradcam.png

Each image is converted as the training images were: 8-bit RGB (DICOM: rescale slope/intercept, then
the file's window; MONOCHROME1 inverted), bicubic resize to the model's size, grey by luma for
one-channel models, the run's normalisation. Unreadable files are reported and skipped.
"""


def add_options(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "a run folder, a .pt bundle (its best.pt, an ensemble) or an exported .onnx model")
    parser.add_argument(
        "images",
        metavar="IMAGE",
        nargs="+",
        help="image files or folders: PNG, JPEG, BMP, TIFF, DICOM (.dcm), .npy/.npz arrays",
    )
    parser.add_argument(
        "--out", metavar="FILE", help="also write the predictions to FILE.csv or FILE.json (default: none)"
    )
    parser.add_argument("--top", type=int, default=3, help="classes listed per image (default: 3)")
    parser.add_argument(
        "--batch-size", type=int, default=PREDICT_BATCH_SIZE, help="images per forward pass (default: %(default)s)"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx", "executorch"),
        default="auto",
        help="auto: the run's model.onnx when it was exported from its best.pt, else PyTorch; executorch: the "
        "run's model.pte (an exported file given as RUN is run by its own runtime) (default: auto)",
    )
    parser.add_argument(
        "--explain",
        metavar="METHOD",
        choices=(*EXPLAIN_METHODS, "all"),
        help=f"also draw each image's heatmap of its predicted class with METHOD ({', '.join(EXPLAIN_METHODS)} or "
        "all), as 'medclassify explain' does; needs the PyTorch model (default: none)",
    )
    parser.add_argument(
        "--explain-dir", metavar="DIR", help="with --explain: where the PNG files go (default: RUN/explain)"
    )
    add_device_option(parser)
    add_switch(parser, "quiet", "no progress bar")


def _write_predictions(path: Path, predictions, top: int, describe: str) -> None:
    from ..io import PROBABILITY_FORMAT, probability_columns, write_csv, write_json

    if path.suffix.lower() == ".json":
        write_json(
            path,
            {
                "model": describe,
                "predictions": predictions.records(top),
                "skipped": [{"file": f, "error": e} for f, e in predictions.skipped],
            },
        )
        return
    decided = predictions.operating_point is not None
    with_sets = predictions.conformal is not None
    header = [
        "file",
        "prediction",
        "probability",
        "top",
        *(["decision"] if decided else []),
        *(["prediction_set"] if with_sets else []),
    ] + probability_columns(predictions.class_names)
    rows = (
        [
            r["file"],
            r["prediction"],
            format(r["probability"], PROBABILITY_FORMAT),
            "; ".join(f"{t['class']} {t['probability']:.4f}" for t in r["top"]),
            *([r["decision"]] if decided else []),
            *(["; ".join(r["prediction_set"]["classes"])] if with_sets else []),
            *(format(p, PROBABILITY_FORMAT) for p in r["probabilities"].values()),
        ]
        for r in predictions.records(top)
    )
    write_csv(path, header, rows)


def run(args: argparse.Namespace) -> int:
    from ..inference.predictor import Predictor

    if args.top < 1 or args.batch_size < 1:
        raise MedclassifyError("--top and --batch-size must be >= 1")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise MedclassifyError(f"--out {out}: expected a .csv or .json file name")
    if args.explain_dir and not args.explain:
        raise MedclassifyError("--explain-dir is where --explain writes: give --explain METHOD too")
    predictor = Predictor.from_run(args.run, device=args.device, backend=args.backend)
    explainer = None
    if args.explain:  # loaded before any prediction, so that a file without PyTorch weights stops here
        torch_backed = predictor.backend.name == "pytorch"
        explainer = predictor if torch_backed else Predictor.from_run(args.run, device=args.device, backend="torch")
    predictions = predictor.predict(args.images, batch_size=args.batch_size, progress=not args.quiet)
    report_skipped("predict", predictions.skipped, len(predictions))
    from ..text import shorten

    width = min(max(len(name) for name in predictions.sources), 60)
    labels = [shorten(predictions.predicted(i), 40) for i in range(len(predictions))]
    label_width = max(len("prediction"), *map(len, labels))
    point = predictions.operating_point
    if point is not None:
        print(
            f"decision: '{point['positive_class']}' when its probability is at least {point['threshold']:.4g} "
            f"({point['rule']}, chosen on the validation split)",
            file=sys.stderr,
        )
    if predictions.conformal is not None:
        record = predictions.conformal
        print(
            f"set: the classes that hold the true class with {1 - record['alpha']:.0%} confidence, for images like the "
            f"validation images ({record['score']} conformal sets calibrated on them); empty: no class is likely enough",
            file=sys.stderr,
        )
    decisions = (
        [shorten(predictions.decision(i) or "", 40) for i in range(len(predictions))] if point is not None else []
    )
    decision_width = max([len("decision"), *map(len, decisions)]) if decisions else 0
    decision_head = f"{'decision':<{decision_width}}  " if decisions else ""
    print(f"{'file':<{width}}  {'prediction':<{label_width}} {'prob':>6}  {decision_head}top {args.top}")
    for i, name in enumerate(predictions.sources):
        shown = name if len(name) <= width else "…" + name[-width + 1 :]
        top = ", ".join(f"{shorten(c, 40)} {p:.3f}" for c, p in predictions.top(i, args.top))
        decision = f"{decisions[i]:<{decision_width}}  " if decisions else ""
        members = predictions.prediction_set(i)
        in_set = "" if members is None else f"  set {{{', '.join(shorten(c, 40) for c in members)}}}"
        print(
            f"{shown:<{width}}  {labels[i]:<{label_width}} {predictions.probabilities[i].max():>6.3f}  {decision}{top}{in_set}"
        )
    if out is not None:
        _write_predictions(out, predictions, args.top, predictor.describe())
        print(f"wrote {out}", file=sys.stderr)
    if explainer is not None:
        from ..explain import explain_images, write_overlays

        source = Path(args.run)
        folder = (
            Path(args.explain_dir) if args.explain_dir else (source if source.is_dir() else source.parent) / "explain"
        )
        explanations, _ = explain_images(explainer, args.images, method=args.explain)
        for path in write_overlays(explanations, folder):
            print(f"wrote {path}", file=sys.stderr)
    return 0


COMMAND = Command(
    "classify new images (PNG, JPEG, BMP, TIFF, DICOM, .npy/.npz) with a run or an exported model",
    PREDICT_EPILOG,
    add_options,
    run,
)
