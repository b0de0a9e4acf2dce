"""Temperature scaling: fitted on validation, stored in the bundle, applied by every consumer and
inside the exported graph, with the raw and calibrated figures side by side."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import log_loss

from helpers import quadrant_images
from medclassify.cli import main
from medclassify.config import TrainConfig
from medclassify.evaluation.calibration import fit_temperature, negative_log_likelihood
from medclassify.inference import Predictor, export_model
from medclassify.training import train


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (20000, 6))
    true_temperature = 2.5
    labels = np.array([rng.choice(6, p=p) for p in softmax(logits / true_temperature)])
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)
    for t in (0.5, 1.0, 3.0):
        assert negative_log_likelihood(logits, labels, False, t) == pytest.approx(
            log_loss(labels, softmax(logits / t), labels=range(6)), abs=1e-9
        )
    multi = (rng.random((2000, 3)) < 1 / (1 + np.exp(-logits[:2000, :3] / 0.5))).astype(int)
    assert fit_temperature(logits[:2000, :3], multi, multi_label=True) == pytest.approx(0.5, rel=0.1)


@pytest.fixture(scope="module")
def calibrated_run(quadrant_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(quadrant_run, run)
    assert main(["calibrate", str(run)]) == 0
    return run


def test_calibrate_stores_the_temperature_and_both_sets_of_figures(calibrated_run):
    bundle = torch.load(calibrated_run / "best.pt", weights_only=True)
    temperature = bundle["calibration"]["temperature"]
    assert bundle["calibration"]["fitted_on"] == "val" and temperature > 0
    assert bundle["calibration"]["val_nll_after"] <= bundle["calibration"]["val_nll_before"] + 1e-12
    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    assert metrics["calibrated"]["temperature"] == temperature
    assert metrics["calibrated"]["test"]["acc"] == metrics["test"]["acc"]  # the decisions stay
    assert {"ece", "brier", "nll"} <= set(metrics["calibrated"]["test"]) and {"ece", "brier", "nll"} <= set(
        metrics["test"]
    )
    assert (calibrated_run / "reliability.png").is_file() and (calibrated_run / "reliability.svg").is_file()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")  # TorchScript is what this check loads
def test_predict_applies_the_temperature_and_the_export_holds_it(calibrated_run, tmp_path, capsys):
    temperature = torch.load(calibrated_run / "best.pt", weights_only=True)["calibration"]["temperature"]
    pixels = np.stack([quadrant_images(name, 1)[0] for name in ("top-left", "none", "bottom-right")])[:, None]
    raw = Predictor.from_run(calibrated_run, backend="torch", calibrated=False)
    scaled = Predictor.from_run(calibrated_run, backend="torch")
    np.testing.assert_allclose(
        scaled.predict_pixels(pixels), softmax(raw.logits_of_pixels(pixels) / temperature), atol=1e-12
    )
    assert "temperature" in scaled.describe()
    export_model(calibrated_run)
    onnx = Predictor.from_run(calibrated_run)
    assert onnx.backend.name == "onnxruntime" and onnx.temperature == 1.0  # inside the graph, not applied twice
    np.testing.assert_allclose(onnx.predict_pixels(pixels), scaled.predict_pixels(pixels), atol=1e-5)
    result = export_model(calibrated_run, tmp_path / "model.ts", format="torchscript")
    scripted = torch.jit.load(str(result.path))
    with torch.inference_mode():
        logits = scripted(torch.from_numpy(scaled.normalise(pixels))).numpy()
    np.testing.assert_allclose(softmax(logits), scaled.predict_pixels(pixels), atol=1e-5)
    Image.fromarray(quadrant_images("top-left", 1)[0]).save(tmp_path / "a.png")
    assert main(["predict", str(calibrated_run), str(tmp_path / "a.png"), "--out", str(tmp_path / "p.json")]) == 0
    record = json.loads((tmp_path / "p.json").read_text())["predictions"][0]
    expected = scaled.predict(tmp_path / "a.png").probabilities[0]
    assert record["probabilities"]["top-left"] == pytest.approx(
        expected[scaled.class_names.index("top-left")], abs=1e-5
    )


def test_train_can_calibrate_right_away(blood_dir, tmp_path):
    result = train(
        TrainConfig(
            dataset="bloodmnist",
            data_dir=str(blood_dir),
            out=str(tmp_path / "run"),
            epochs=1,
            verify=False,
            quiet=True,
            calibration="temperature",
        )
    )
    assert result.metrics["calibrated"]["temperature"] > 0
    assert "calibration" in torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert not (tmp_path / "run" / ".medclassify.lock").exists()


def test_the_study_figure_rescales_stored_probabilities_exactly():
    """Log-probabilities are the logits up to a constant per image, so the study's reliability
    figure can apply a run's temperature to the probabilities predictions.csv holds."""
    from medclassify.evaluation.figures import rescaled

    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, (200, 5))
    np.testing.assert_allclose(rescaled(softmax(logits), 1.7, False), softmax(logits / 1.7), atol=1e-9)
    sigmoid = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(rescaled(sigmoid, 0.6, True), 1 / (1 + np.exp(-logits / 0.6)), atol=1e-9)
