"""Heatmaps (the default method) on the quadrant task (see test_inference): the heatmap must peak in the quadrant that
decides the class, have the input image's size, and the files must be readable PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import QUADRANT_OF_CLASS, quadrant_images
from medclassify.cli import main
from medclassify.explain import explain_images
from medclassify.inference import Predictor


def peak_quadrant(heatmap: np.ndarray) -> int:
    row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    return 2 * int(row >= heatmap.shape[0] / 2) + int(col >= heatmap.shape[1] / 2)


@pytest.mark.parametrize("size", [28, 70])
def test_heatmap_has_the_input_size_and_peaks_in_the_deciding_quadrant(quadrant_run, size):
    predictor = Predictor.from_run(quadrant_run)
    images, quadrants = [], []
    for name, quadrant in QUADRANT_OF_CLASS.items():
        for array in quadrant_images(name, 4, size=size, seed=10 + quadrant):
            images.append(array)
            quadrants.append(quadrant)
    explanations, skipped = explain_images(predictor, images)
    assert not skipped and len(explanations) == 16
    for explanation, quadrant in zip(explanations, quadrants):
        assert explanation.heatmap.shape == (size, size)
        assert explanation.heatmap.min() >= 0.0 and explanation.heatmap.max() <= 1.0
        assert peak_quadrant(explanation.heatmap) == quadrant, explanation.class_name
        # and most of the heat lies there
        half = size // 2
        rows, cols = divmod(quadrant, 2)
        inside = explanation.heatmap[rows * half : (rows + 1) * half, cols * half : (cols + 1) * half].sum()
        assert inside > 0.5 * explanation.heatmap.sum()


def test_target_class_changes_the_explained_class(quadrant_run):
    predictor = Predictor.from_run(quadrant_run)
    (explanation,), _ = explain_images(predictor, quadrant_images("top-left", 1), target="bottom-right")
    assert explanation.class_name == "bottom-right" and explanation.predicted == "top-left"
    assert explanation.probability < 0.5


def test_cli_writes_overlays_and_the_test_split_grid(quadrant_run, tmp_path, capsys):
    Image.fromarray(quadrant_images("top-right", 1, size=56)[0]).save(tmp_path / "scan.png")
    np.save(tmp_path / "two.npy", quadrant_images("bottom-left", 2))
    (tmp_path / "broken.png").write_bytes(b"junk")
    out = tmp_path / "cams"
    code = main(
        [
            "explain",
            str(quadrant_run),
            str(tmp_path / "scan.png"),
            str(tmp_path / "two.npy"),
            str(tmp_path / "broken.png"),
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and "skipped" in captured.err and "broken.png" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["scan_layercam.png", "two_0_layercam.png", "two_1_layercam.png"]
    assert "scan.png: top-right p=" in captured.out
    with Image.open(out / "scan_layercam.png") as image:
        assert image.format == "PNG" and image.width >= 800

    assert main(["explain", str(quadrant_run), "--out", str(out), "--per-class", "1"]) == 0
    with Image.open(out / "layercam_test_grid.png") as image:
        assert image.format == "PNG" and image.height > image.width  # one row per class (4), two columns


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--target", "middle"],
            "--target middle: not a class of this model; classes: bottom-left, bottom-right, none, top-left, top-right",
        ),
        (["--layer", "nosuch.block"], "--layer nosuch.block: model 'paper-cnn' has no such module"),
    ],
)
def test_explain_option_errors_are_one_line(quadrant_run, tmp_path, capsys, args, message):
    Image.fromarray(quadrant_images("top-right", 1)[0]).save(tmp_path / "scan.png")
    code = main(["explain", str(quadrant_run), str(tmp_path / "scan.png"), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_explain_refuses_an_onnx_model(quadrant_run, tmp_path, capsys):
    from medclassify.inference import export_model

    export_model(quadrant_run, tmp_path / "m.onnx")
    Image.fromarray(quadrant_images("top-right", 1)[0]).save(tmp_path / "scan.png")
    assert main(["explain", str(tmp_path / "m.onnx"), str(tmp_path / "scan.png")]) == 2
    assert "runs with backend onnx or auto, not torch" in capsys.readouterr().err
