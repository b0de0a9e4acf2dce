import json
import math
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from helpers import quadrant_images, write_medmnist_npz
from medclassify.cli import main
from medclassify.errors import ConfigError
from medclassify.evaluation.conformal import (
    _mapie,
    conformal_quantile,
    coverage_report,
    fit_conformal,
    prediction_sets,
)
from medclassify.inference import Predictor, export_model
from medclassify.serve import create_app, load_served_models


def sampled_task(n: int, n_classes: int, seed: int, sharpness: float = 2.0):
    """Probabilities with a known distribution and labels drawn from them: a calibrated model."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, n_classes)) * sharpness
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = (prob.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return prob, labels


def test_conformal_quantile_by_hand():
    scores = np.arange(1, 11) / 10  # 0.1 ... 1.0
    assert conformal_quantile(scores, 0.2) == pytest.approx(0.9)  # rank ceil(11 * 0.8) = 9
    assert conformal_quantile(scores, 0.5) == pytest.approx(0.6)  # rank ceil(5.5) = 6
    assert conformal_quantile(scores[:5], 0.1) == math.inf  # rank 6 of 5: every class stays in


@pytest.mark.parametrize("score", ["lac", "aps"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sets_from_the_stored_threshold_are_mapies_sets(score, seed):
    prob, labels = sampled_task(1200, 6, seed)
    fitted = fit_conformal(prob[:600], labels[:600], 0.1, score)
    _, mapie_sets = _mapie(prob, 0.1, score).conformalize(prob[:600], labels[:600]).predict_set(prob[600:])
    assert np.array_equal(prediction_sets(prob[600:], fitted), mapie_sets[:, :, 0])


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_coverage_over_random_splits_averages_the_target(score):
    """Split conformal guarantees E[coverage] >= 1 - alpha over random calibration/test splits, and LAC
    at most 1 - alpha + 1 / (n_cal + 1); averaged over 200 splits the sampling error is about 0.001.
    APS keeps the class that crosses its threshold whole, so it covers more than the level."""
    prob, labels = sampled_task(800, 5, seed=7)
    rng = np.random.default_rng(0)
    coverages, sizes = [], []
    for _ in range(200):
        order = rng.permutation(len(labels))
        calibration, test = order[:400], order[400:]
        fitted = fit_conformal(prob[calibration], labels[calibration], 0.1, score)
        sets = prediction_sets(prob[test], fitted)
        coverages.append(sets[np.arange(len(test)), labels[test]].mean())
        sizes.append(sets.sum(axis=1).mean())
    mean = float(np.mean(coverages))
    assert mean >= 0.9 - 0.004
    if score == "lac":
        assert mean <= 0.9 + 1 / 401 + 0.004
    assert 1 < np.mean(sizes) < 5


def test_mondrian_gives_a_rare_hard_class_its_coverage():
    """A model that is right on the common classes and guesses on a rare one: the marginal threshold
    covers 90 % on average by failing the rare class; the class-conditional one covers each class."""
    rng = np.random.default_rng(3)
    n = 6000
    labels = rng.choice(4, size=n, p=[0.32, 0.32, 0.32, 0.04])
    prob = np.full((n, 4), 0.02)
    prob[np.arange(n), labels] = 0.94
    rare = labels == 3
    prob[rare] = rng.dirichlet(np.ones(4), size=rare.sum())  # no idea about the rare class
    cal, test = np.arange(n) < n // 2, np.arange(n) >= n // 2
    names = ["a", "b", "c", "rare"]
    marginal = coverage_report(
        prediction_sets(prob[test], fit_conformal(prob[cal], labels[cal], 0.1)), labels[test], names, 0.1
    )
    mondrian_fit = fit_conformal(prob[cal], labels[cal], 0.1, mondrian=True)
    mondrian = coverage_report(prediction_sets(prob[test], mondrian_fit), labels[test], names, 0.1)
    assert marginal["coverage"] >= 0.88 and marginal["by_class"]["rare"]["coverage"] < 0.7
    assert marginal["classes_below_target"] == ["rare"]
    assert mondrian["by_class"]["rare"]["coverage"] >= 0.85 and mondrian["classes_below_target"] == []
    assert len(mondrian_fit["class_thresholds"]) == 4


def test_coverage_report_by_hand():
    sets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1]], dtype=bool)
    labels = np.array([0, 1, 2, 0])
    report = coverage_report(sets, labels, ["x", "y", "z"], alpha=0.1)
    assert report["coverage"] == 0.5 and report["n"] == 4 and report["mean_size"] == 1.25
    assert report["empty_share"] == 0.25
    assert report["by_size"]["2"] == {"n": 2, "coverage": 0.5, "ci": report["by_size"]["2"]["ci"]}
    assert report["by_class"]["x"]["coverage"] == 0.5 and report["by_class"]["y"]["coverage"] == 1.0
    assert report["ci"][0] < 0.5 < report["ci"][1]


def test_fit_conformal_refuses_a_level_outside_zero_and_one():
    prob, labels = sampled_task(50, 3, 0)
    with pytest.raises(ConfigError, match="conformal must lie between 0 and 1"):
        fit_conformal(prob, labels, 1.5)


def test_too_few_calibration_images_keep_every_class_and_store_as_json():
    prob, labels = sampled_task(5, 3, 0)
    fitted = fit_conformal(prob, labels, 0.1, mondrian=True)
    assert fitted["threshold"] is None and fitted["class_thresholds"] == [None, None, None]
    assert json.loads(json.dumps(fitted)) == fitted
    assert prediction_sets(prob, fitted).all()


@pytest.fixture(scope="module")
def conformal_run(quadrant_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("conformal") / "run"
    shutil.copytree(quadrant_run, run)
    assert main(["calibrate", str(run), "--calibration", "none", "--conformal", "0.1"]) == 0
    return run


def test_calibrate_stores_the_sets_and_reports_their_coverage(conformal_run, capsys):
    bundle = torch.load(conformal_run / "best.pt", weights_only=True)["conformal"]
    assert bundle["alpha"] == 0.1 and bundle["score"] == "lac" and bundle["fitted_on"] == "val"
    metrics = json.loads((conformal_run / "metrics.json").read_text())["conformal"]
    test = metrics["test"]
    assert test["target"] == pytest.approx(0.9) and 0 <= test["coverage"] <= 1 and test["ci"][0] <= test["coverage"]
    assert sum(part["n"] for part in test["by_class"].values()) == test["n"] == metrics["test"]["n"]
    assert (conformal_run / "conformal.png").is_file() and (conformal_run / "conformal.svg").is_file()


def test_predict_export_and_the_api_give_the_same_sets(conformal_run, tmp_path, capsys):
    pixels = np.stack(
        [quadrant_images(name, 3, seed=9)[i] for i, name in enumerate(("top-left", "none", "bottom-right"))]
    )
    paths = []
    for i, array in enumerate(pixels):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(array).save(paths[-1])
    predictor = Predictor.from_run(conformal_run, backend="torch")
    expected_sets = prediction_sets(predictor.predict_pixels(pixels[:, None]), predictor.conformal)
    expected = [[c for c, member in zip(predictor.class_names, row) if member] for row in expected_sets]
    assert main(["predict", str(conformal_run), *map(str, paths), "--out", str(tmp_path / "p.json")]) == 0
    assert "with 90% confidence" in capsys.readouterr().err
    records = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert [sorted(r["prediction_set"]["classes"]) for r in records] == [sorted(e) for e in expected]
    assert all(r["prediction_set"]["level"] == pytest.approx(0.9) for r in records)
    export_model(conformal_run)
    onnx = Predictor.from_run(conformal_run)
    assert onnx.backend.name == "onnxruntime" and onnx.conformal == predictor.conformal
    assert [onnx.predict(paths).prediction_set(i) for i in range(3)] == [
        predictor.predict(paths).prediction_set(i) for i in range(3)
    ]
    with TestClient(create_app(load_served_models([f"q={conformal_run}"]))) as client:
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
        answer = client.post("/v1/predict", files=files).json()["predictions"]
    assert [a["prediction_set"] for a in answer] == [r["prediction_set"] for r in records]


def test_a_shifted_test_split_is_reported_below_the_target(tmp_path, capsys):
    """Calibrated on validation images like the training ones, tested on darker ones (another
    scanner): the sets cover less than asked, and the run says so."""
    data = tmp_path / "data"
    write_medmnist_npz(data / "bloodmnist.npz", counts=(240, 120, 160))
    with np.load(data / "bloodmnist.npz") as archive:
        arrays = dict(archive)
    arrays["test_images"] = (arrays["test_images"] * 0.4).astype(np.uint8)
    np.savez_compressed(data / "bloodmnist.npz", **arrays)
    run = tmp_path / "run"
    args = ["train", "--dataset", "bloodmnist", "--data-dir", str(data), "--no-verify", "--out", str(run)]
    assert main([*args, "--epochs", "3", "--conformal", "0.1"]) == 0
    err = capsys.readouterr().err
    record = json.loads((run / "metrics.json").read_text())["conformal"]
    assert record["val"]["coverage"] >= 0.85
    assert record["test"]["ci"][1] < 0.9 and "below the target" in err
    assert record["test"]["classes_below_target"] and "classes covered less than the target" in err
