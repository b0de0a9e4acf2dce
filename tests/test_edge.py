"""The device folder: the int8 model, its settings, a classify.py that needs only numpy, Pillow and
onnxruntime and gives medclassify's answers, and a README with what was measured."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import one_line_error, run_cli
from medclassify.inference import Predictor
from medclassify.inference.edge import EDGE_SCRIPT, export_edge
from medclassify.inference.quantize import QUANTIZED_FILE

STANDALONE = {"__future__", "argparse", "json", "sys", "pathlib", "numpy", "onnxruntime", "PIL"}


@pytest.fixture
def edge_folder(blood_run, tmp_path):
    run = shutil.copytree(blood_run.run_dir, tmp_path / "run")
    from medclassify.config import PostTrainingConfig
    from medclassify.runs import calibrate_run

    calibrate_run(run, PostTrainingConfig(calibration="temperature", conformal=0.2))
    export_edge(run, tmp_path / "edge", max_drop=100)
    return run, tmp_path / "edge"


def test_classify_py_imports_only_numpy_pillow_and_onnxruntime():
    tree = ast.parse(EDGE_SCRIPT.read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= STANDALONE, imported - STANDALONE


def test_the_edge_folder_gives_the_classes_and_probabilities_predict_gives(edge_folder, tmp_path):
    run, edge = edge_folder
    assert sorted(p.name for p in edge.iterdir()) == ["README.md", "classify.py", "model.int8.onnx", "model.json"]
    settings = json.loads((edge / "model.json").read_text())
    assert settings["conformal"]["alpha"] == 0.2 and settings["size"] == 28 and settings["channels"] == 3
    readme = (edge / "README.md").read_text()
    record = json.loads((run / "exports.json").read_text())[QUANTIZED_FILE]
    assert f"accuracy {record['gate']['int8']['acc']:.4f}" in readme and "CC BY 4.0" in readme
    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 33, 3), dtype=np.uint8)).save(path)
        images.append(path)
    done = subprocess.run(
        [sys.executable, str(edge / "classify.py"), *map(str, images), "--json"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    expected = Predictor.from_run(run / QUANTIZED_FILE).predict([str(p) for p in images])
    for i, answer in enumerate(answers):
        assert answer["prediction"] == expected.class_names[int(expected.probabilities[i].argmax())]
        assert np.allclose(list(answer["probabilities"].values()), expected.probabilities[i], atol=1e-5)
        assert answer["prediction_set"] == expected.prediction_set(i)


def test_bad_edge_inputs_are_one_line(edge_folder, tmp_path, capsys):
    run, edge = edge_folder
    done = subprocess.run(
        [sys.executable, str(edge / "classify.py"), str(edge / "model.json")], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.strip().endswith("not a readable image (PNG, JPEG, BMP or TIFF)")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    one_line_error(*run_cli(capsys, "export", run, "--format", "edge", "--out", foreign)[::2], "is not an edge folder")
    assert (foreign / "notes.txt").read_text() == "mine"
    one_line_error(*run_cli(capsys, "export", run, "--format", "edge")[::2], "--format edge needs --out DIR")
    code, out, err = run_cli(capsys, "export", run, "--format", "edge", "--out", edge)  # its own folder: rewritten
    assert code == 0 and (edge / "classify.py").is_file() and not list(tmp_path.glob(".edge*"))


@pytest.mark.slow
def test_classify_py_runs_in_an_environment_of_its_three_packages(edge_folder, tmp_path):
    """A fresh virtual environment with numpy, Pillow and onnxruntime only, as on the device."""
    _, edge = edge_folder
    venv = tmp_path / "device"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "numpy", "pillow", "onnxruntime"],
        capture_output=True,
        text=True,
    )
    if installed.returncode != 0:
        pytest.skip(f"no package index reachable for numpy, pillow, onnxruntime: {installed.stderr[-300:]}")
    image = tmp_path / "cell.png"
    Image.fromarray(np.full((28, 28, 3), 120, dtype=np.uint8)).save(image)
    done = subprocess.run([str(python), str(edge / "classify.py"), str(image)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith(f"{image}: "), done.stderr
    missing = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    assert missing.returncode != 0, "the device environment must not hold torch"
