"""ExecuTorch programs: a run exported as model.pte (float32) and model.int8.pte (PT2E, XNNPACK),
run by ExecuTorch's own runtime on the test split behind the accuracy gate, recorded and checked
like model.onnx, and used by predict, evaluate and serve."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import one_line_error, run_cli
from medclassify.errors import CheckpointError
from medclassify.inference import Predictor, export_executorch

pytest.importorskip("executorch", reason="ExecuTorch is in the dev and edge extras")


@pytest.fixture(scope="module")
def pte_run(blood_run, tmp_path_factory):
    """A copy of the shared BloodMNIST run with its float32 and int8 ExecuTorch programs."""
    run = shutil.copytree(blood_run.run_dir, tmp_path_factory.mktemp("pte") / "run")
    export_executorch(run)
    export_executorch(run, quantize="int8", max_drop=100, calibration_images=40)
    return run


def _test_split(run):
    from medclassify.runs import load_run_data
    from medclassify.runs.files import RunDir

    test = load_run_data(RunDir(run).config()).splits["test"]
    return test.images.numpy(), test.labels.numpy()


def test_the_float32_program_gives_pytorchs_probabilities(pte_run):
    pixels, labels = _test_split(pte_run)
    program = Predictor.from_run(pte_run / "model.pte")
    reference = Predictor.from_run(pte_run, backend="torch")
    assert program.backend.name == "executorch" and program.class_names == reference.class_names
    assert np.abs(program.predict_pixels(pixels) - reference.predict_pixels(pixels)).max() < 1e-5
    record = json.loads((pte_run / "exports.json").read_text())["model.pte"]
    assert record["format"] == "executorch" and record["gate"]["images"] == len(labels)
    assert record["gate"]["agreement"] == 1.0
    # --backend executorch on the run folder takes the same program
    assert Predictor.from_run(pte_run, backend="executorch").source == pte_run / "model.pte"


def test_the_int8_program_is_gated_on_its_own_predictions(pte_run):
    pixels, labels = _test_split(pte_run)
    record = json.loads((pte_run / "exports.json").read_text())["model.int8.pte"]
    gate = record["gate"]
    p_int8 = Predictor.from_run(pte_run / "model.int8.pte").predict_pixels(pixels)
    p_float = Predictor.from_run(pte_run, backend="torch").predict_pixels(pixels)
    assert record["format"] == "executorch-int8" and record["calibration"]["images"] == 40
    assert gate["int8"]["acc"] == pytest.approx(np.mean(p_int8.argmax(1) == labels))
    assert gate["float32"]["acc"] == pytest.approx(np.mean(p_float.argmax(1) == labels))
    assert gate["agreement"] == pytest.approx(np.mean(p_int8.argmax(1) == p_float.argmax(1)))
    low, high = gate["difference"]["acc"]["ci_low"], gate["difference"]["acc"]["ci_high"]
    assert low <= gate["difference"]["acc"]["difference"] <= high
    float_bytes = (pte_run / "model.pte").stat().st_size
    assert (pte_run / "model.int8.pte").stat().st_size <= 0.35 * float_bytes, "int8 weights: about a quarter"


def test_predict_evaluate_and_serve_take_the_program(pte_run, tmp_path, capsys):
    program = pte_run / "model.int8.pte"
    image = tmp_path / "cell.png"
    from PIL import Image

    pixels, _ = _test_split(pte_run)
    Image.fromarray(pixels[0].transpose(1, 2, 0)).save(image)
    code, out, err = run_cli(capsys, "predict", program, image, "--quiet", "--out", tmp_path / "p.json")
    assert code == 0, err
    expected = Predictor.from_run(program).predict([str(image)])
    written = json.loads((tmp_path / "p.json").read_text())
    assert written["predictions"][0]["prediction"] == expected.predicted(0)
    assert "executorch" in written["model"]
    code, out, err = run_cli(capsys, "evaluate", pte_run, "--model", "model.int8.pte")
    assert code == 0, err
    metrics = json.loads((pte_run / "metrics_model.int8.pte.json").read_text())
    record = json.loads((pte_run / "exports.json").read_text())["model.int8.pte"]
    assert metrics["test"]["acc"] == pytest.approx(record["gate"]["int8"]["acc"])
    from medclassify.serve.served import load_served_models

    served = load_served_models([str(program)])["model.int8"]
    assert served.version == served.predictor.metadata["checkpoint_md5"][:12] and not served.can_explain


def test_an_edited_program_is_not_trusted(pte_run, tmp_path):
    run = shutil.copytree(pte_run, tmp_path / "run")
    path = run / "model.pte"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="changed since it was exported"):
        Predictor.from_run(path)
    stranger = tmp_path / "stranger.pte"
    stranger.write_bytes(b"not a program")
    with pytest.raises(CheckpointError, match="not a readable ExecuTorch program"):
        Predictor.from_run(stranger)


def test_bad_requests_get_one_line(pte_run, tmp_path, capsys):
    run = shutil.copytree(pte_run, tmp_path / "run")
    one_line_error(*run_cli(capsys, "export", run, "--format", "executorch", "--max-drop", "nan")[::2], "--max-drop")
    one_line_error(
        *run_cli(capsys, "export", run / "best.pt", "--format", "executorch")[::2],
        "not a run folder",
    )
    one_line_error(*run_cli(capsys, "predict", run / "model.pte", "x.png", "--backend", "onnx")[::2], "--backend")
    one_line_error(*run_cli(capsys, "evaluate", run, "--model", "elsewhere.onnx")[::2], "--model")
