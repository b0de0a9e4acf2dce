"""Seed ensembles: one bundle whose probabilities are the mean of its members', used by predict,
export (one ONNX graph), explain and serve like any model, and the ensemble rows of a study."""

import io
import shutil
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medclassify import TrainConfig, train
from medclassify.errors import CheckpointError
from medclassify.explain import explain_images
from medclassify.inference import Predictor, export_model
from medclassify.runs import load_checkpoint, make_ensemble
from medclassify.serve import create_app, load_served_models


@pytest.fixture(scope="module")
def members(blood_run, tmp_path_factory):
    """The session's paper-cnn (seed 1) and a bn-cnn of seed 2 on the same data: an ensemble may mix models."""
    data_dir = blood_run.run_dir.parent / "data"
    other = train(
        TrainConfig(
            dataset="bloodmnist", data_dir=str(data_dir), model="bn-cnn", epochs=1, seed=2, verify=False, quiet=True,
            out=str(tmp_path_factory.mktemp("other") / "run"),
        )
    )  # fmt: skip
    return [blood_run.run_dir, other.run_dir], data_dir


@pytest.fixture(scope="module")
def ensemble(members, tmp_path_factory):
    return make_ensemble(members[0], tmp_path_factory.mktemp("ensemble") / "blood.pt").path


def test_the_ensemble_predicts_the_mean_of_its_members_probabilities(members, ensemble):
    runs, data_dir = members
    with np.load(data_dir / "bloodmnist.npz") as archive:
        pixels = archive["test_images"][:40].transpose(0, 3, 1, 2)
    together = Predictor.from_run(ensemble).predict_pixels(pixels)
    alone = [Predictor.from_run(run, backend="torch").predict_pixels(pixels) for run in runs]
    assert np.allclose(together, np.mean(alone, axis=0), atol=1e-6)
    assert np.allclose(together.sum(1), 1.0, atol=1e-6)
    bundle = load_checkpoint(ensemble)
    assert bundle["model"]["name"] == "ensemble" and [m["name"] for m in bundle["model"]["members"]] == [
        "paper-cnn",
        "bn-cnn",
    ]
    assert [m["source"] for m in bundle["ensemble"]] == [str(run / "best.pt") for run in runs]


def test_the_ensemble_exports_to_one_onnx_graph_that_agrees(members, ensemble, tmp_path):
    bundle = tmp_path / "blood.pt"
    shutil.copy(ensemble, bundle)
    result = export_model(bundle)  # a bundle outside a run folder: the parity check uses random images
    assert result.path == tmp_path / "blood.onnx" and result.max_abs_diff <= 1e-4
    with np.load(members[1] / "bloodmnist.npz") as archive:
        pixels = archive["test_images"][:16].transpose(0, 3, 1, 2)
    onnx = Predictor.from_run(result.path).predict_pixels(pixels)
    assert np.allclose(onnx, Predictor.from_run(bundle).predict_pixels(pixels), atol=1e-5)


def test_the_ensemble_explains_and_serves(ensemble, tmp_path):
    image = (np.random.default_rng(0).random((28, 28, 3)) * 255).astype(np.uint8)
    path = tmp_path / "cell.png"
    Image.fromarray(image).save(path)
    explanations, failures = explain_images(Predictor.from_run(ensemble), [path])
    assert not failures and explanations[0].heatmap.shape == (28, 28)
    assert explanations[0].heatmap.min() >= 0 and explanations[0].heatmap.max() <= 1
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    with TestClient(create_app(load_served_models([f"blood={ensemble}"]))) as client:
        answer = client.post("/v1/predict?model=blood", files=[("files", ("cell.png", buffer.getvalue(), "image/png"))])
    assert answer.status_code == 200, answer.text
    assert sum(answer.json()["predictions"][0]["probabilities"].values()) == pytest.approx(1.0)


def test_members_that_do_not_fit_are_refused_by_name(members, quadrant_run, tmp_path):
    runs, _ = members
    with pytest.raises(CheckpointError, match=r"does not fit the ensemble of .*image size 28 vs 28|channels 3 vs 1"):
        make_ensemble([runs[0], quadrant_run], tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="an ensemble needs at least two models, got 1"):
        make_ensemble([runs[0]], tmp_path / "one.pt")
    with pytest.raises(CheckpointError, match=r"out .*mixed.onnx: expected a .pt file"):
        make_ensemble(runs, tmp_path / "mixed.onnx")


def test_ensemble_command(members, tmp_path):
    runs, _ = members
    out = tmp_path / "cli.pt"
    done = subprocess.run(
        [sys.executable, "-m", "medclassify", "ensemble", *map(str, runs), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "ensemble of 2 models" in done.stdout and out.is_file()
    missing = subprocess.run(
        [sys.executable, "-m", "medclassify", "ensemble", str(runs[0]), str(tmp_path / "nothing"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1 and "nothing" in missing.stderr
