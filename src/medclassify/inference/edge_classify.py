"""Classify images with the model in this folder: numpy, Pillow and onnxruntime only.

    python classify.py image.png [more images ...] [--json]

Written by ``medclassify export RUN --format edge``. Each image is read as medclassify reads it
(8-bit RGB, a bicubic resize to the model's size without keeping the aspect ratio, grey by ITU-R
601-2 luma for a one-channel model, the run's normalisation); the model's logits are already divided
by the run's temperature. For each image it prints the class and its probability, every class's
probability, the decision at the run's operating point and the conformal prediction set, when the
run has them; ``--json`` prints the same as JSON. A file that is not a readable image stops it with
one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, UnidentifiedImageError

HERE = Path(__file__).resolve().parent
LUMA = np.array([0.299, 0.587, 0.114])


def load_settings(folder: Path = HERE) -> dict:
    return json.loads((folder / "model.json").read_text(encoding="utf-8"))


def read_image(path: Path, settings: dict) -> np.ndarray:
    """One file -> uint8 C x size x size, as medclassify converts it."""
    try:
        with Image.open(path) as image:
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise ValueError(f"{image.mode} images (more than 8 bits) are not read here; use medclassify predict")
            rgb = image.convert("RGB")
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except (OSError, UnidentifiedImageError):
        raise ValueError("not a readable image (PNG, JPEG, BMP or TIFF)") from None
    size = settings["size"]
    pixels = np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)
    if settings["channels"] == 1:
        return np.rint(pixels @ LUMA)[None].astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def normalise(pixels: np.ndarray, settings: dict) -> np.ndarray:
    mean = np.asarray(settings["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(settings["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def prediction_set(probabilities: np.ndarray, conformal: dict) -> list[int]:
    """The classes in the image's conformal set (LAC or APS, one threshold or one per class)."""
    thresholds = conformal["class_thresholds"] if conformal.get("mondrian") else [conformal["threshold"]]
    threshold = np.broadcast_to(np.array([np.inf if t is None else t for t in thresholds]), probabilities.shape)
    if conformal["score"] == "lac":
        return [int(c) for c in np.flatnonzero(1 - probabilities <= threshold)]
    order = np.argsort(-probabilities, kind="stable")
    before = np.cumsum(probabilities[order]) - probabilities[order]
    return sorted(int(c) for c, keep in zip(order, before < threshold[order], strict=True) if keep)


def classify(paths: list[Path], folder: Path = HERE) -> list[dict]:
    """Every image's class, probabilities, decision and prediction set."""
    settings = load_settings(folder)
    session = onnxruntime.InferenceSession(str(folder / settings["model"]), providers=["CPUExecutionProvider"])
    names = settings["class_names"]
    results = []
    for path in paths:
        try:
            pixels = read_image(path, settings)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        logits = session.run(None, {"images": normalise(pixels[None], settings)})[0][0]
        logits = logits.astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = int(probabilities.argmax())
        result = {
            "file": str(path),
            "prediction": names[best],
            "probability": float(probabilities[best]),
            "probabilities": {name: float(p) for name, p in zip(names, probabilities, strict=True)},
        }
        point = settings.get("operating_point")
        if point:
            positive = point["positive_class"]
            reached = probabilities[names.index(positive)] >= point["threshold"]
            result["decision"] = positive if reached else f"not {positive}"
        if settings.get("conformal"):
            result["prediction_set"] = [names[c] for c in prediction_set(probabilities, settings["conformal"])]
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="image files: PNG, JPEG, BMP or TIFF")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = parser.parse_args(argv)
    try:
        results = classify(args.images)
    except ValueError as exc:
        print(f"classify.py: error: {exc}", file=sys.stderr)
        return 2
    lines = [json.dumps(results, indent=2)] if args.json else [_line(result) for result in results]
    try:
        print("\n".join(lines))
    except BrokenPipeError:  # e.g. '| head': the reader left, which is not an error of ours
        return 141
    return 0


def _line(result: dict) -> str:
    extra = f"  decision: {result['decision']}" if "decision" in result else ""
    if "prediction_set" in result:
        extra += f"  set: {{{', '.join(result['prediction_set'])}}}"
    return f"{result['file']}: {result['prediction']} {result['probability']:.4f}{extra}"


if __name__ == "__main__":
    sys.exit(main())
