"""int8 models: ONNX Runtime's static quantization of a run, written only when the test accuracy
holds (the gate), recorded and checked like model.onnx, and refused with one line on bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import one_line_error, run_cli
from medclassify.errors import CheckpointError, ConfigError
from medclassify.inference import Predictor, quantize_run
from medclassify.inference import quantize as quantize_module
from medclassify.inference.quantize import QUANTIZED_FILE, stratified_sample


@pytest.fixture
def run_copy(blood_run, tmp_path):
    """The shared BloodMNIST run, copied: quantizing writes into the run folder."""
    return shutil.copytree(blood_run.run_dir, tmp_path / "run")


def test_an_int8_model_is_written_recorded_and_predicts_like_the_float_one(run_copy):
    result = quantize_run(run_copy, max_drop=100, calibration_images=40)
    path = run_copy / QUANTIZED_FILE
    assert result.path == path and path.is_file() and result.bytes == path.stat().st_size
    assert result.bytes <= 0.3 * (run_copy / "model.onnx").stat().st_size, "int8 weights: a quarter of float32's"
    gate = result.gate
    record = json.loads((run_copy / "exports.json").read_text())
    assert set(record) == {"model.onnx", QUANTIZED_FILE}
    assert record[QUANTIZED_FILE]["format"] == "onnx-int8" and record[QUANTIZED_FILE]["gate"]["images"] == 80
    assert record[QUANTIZED_FILE]["calibration"] == {"method": "percentile", "images": 40}
    # the gate's figures are the two models' own, recomputed here from their predictions
    int8 = Predictor.from_run(path)
    floating = Predictor.from_run(run_copy / "model.onnx")
    assert int8.backend.name == "onnxruntime" and int8.class_names == floating.class_names
    from medclassify.runs import load_run_data
    from medclassify.runs.files import RunDir

    test = load_run_data(RunDir(run_copy).config()).splits["test"]
    pixels, labels = test.images.numpy(), test.labels.numpy()
    p_int8, p_float = int8.predict_pixels(pixels), floating.predict_pixels(pixels)
    assert gate["int8"]["acc"] == pytest.approx(np.mean(p_int8.argmax(1) == labels))
    assert gate["float32"]["acc"] == pytest.approx(np.mean(p_float.argmax(1) == labels))
    assert gate["agreement"] == pytest.approx(np.mean(p_int8.argmax(1) == p_float.argmax(1)))
    assert gate["max_probability_difference"] == pytest.approx(np.abs(p_int8 - p_float).max(), abs=1e-6)
    low, high = gate["difference"]["acc"]["ci_low"], gate["difference"]["acc"]["ci_high"]
    assert low <= gate["difference"]["acc"]["difference"] <= high


def test_an_edited_int8_model_is_not_trusted(run_copy):
    quantize_run(run_copy, max_drop=100, calibration_images=16)
    path = run_copy / QUANTIZED_FILE
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="changed since it was exported"):
        Predictor.from_run(path)


def test_the_gate_writes_nothing_when_the_accuracy_drops_too_far(run_copy, monkeypatch):
    real_gate = quantize_module._gate

    def worse(*args):
        gate = real_gate(*args)
        return {**gate, "int8": {**gate["int8"], "acc": gate["float32"]["acc"] - 0.05}}

    monkeypatch.setattr(quantize_module, "_gate", worse)
    before = (run_copy / "exports.json").read_text() if (run_copy / "exports.json").exists() else None
    with pytest.raises(CheckpointError, match=r"a drop of 5\.00 points, more than max_drop 1; nothing was written"):
        quantize_run(run_copy, calibration_images=16)
    assert not (run_copy / QUANTIZED_FILE).exists()
    assert QUANTIZED_FILE not in json.loads((run_copy / "exports.json").read_text())
    assert before is None or "model.int8" not in before


@pytest.mark.parametrize("max_drop", [-1, float("nan"), "1", True])
def test_a_max_drop_that_is_not_a_number_of_points_is_refused(run_copy, max_drop):
    with pytest.raises(ConfigError, match="max_drop must be a number of percentage points >= 0"):
        quantize_run(run_copy, max_drop=max_drop)  # type: ignore[arg-type]  # the misuse under test


def test_bad_quantize_options_are_one_line_on_the_command_line(run_copy, blood_run, capsys):
    one_line_error(*run_cli(capsys, "export", run_copy, "--quantize", "int8", "--max-drop", "-1")[::2], "--max-drop")
    one_line_error(
        *run_cli(capsys, "export", run_copy, "--quantize", "int8", "--format", "torchscript")[::2], "--quantize int8"
    )
    one_line_error(
        *run_cli(capsys, "export", run_copy / "best.pt", "--quantize", "int8")[::2],
        "not a run folder; int8 quantization is judged on a run's test split",
    )
    moved = run_copy.parent / "moved"
    shutil.copytree(run_copy, moved)
    config = json.loads((moved / "config.json").read_text())
    config["config"]["data_dir"] = str(run_copy.parent / "nowhere")
    (moved / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "export", moved, "--quantize", "int8")
    one_line_error(code, err, "int8 quantization needs the run's training and test data")
    assert "--data-dir" in err and not (moved / QUANTIZED_FILE).exists()


def test_the_calibration_sample_takes_every_class_in_turn():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 5)
    chosen = stratified_sample(labels, 9)
    assert np.bincount(labels[chosen]).tolist() == [3, 3, 3]
    assert np.bincount(labels[stratified_sample(labels, 12)]).tolist() == [5, 3, 4], "the rare class: all it has"
