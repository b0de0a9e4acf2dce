"""Operating points: thresholds chosen on validation by a clinical rule, Wilson intervals, and the
decision reported by predict, the API and exported models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from helpers import write_medmnist_npz
from medclassify.cli import main
from medclassify.errors import ConfigError
from medclassify.evaluation.threshold import choose_threshold, operating_point, parse_rule, wilson_interval


def rates(positive, score, t):
    decided = score >= t
    return decided[positive].mean(), (~decided[~positive]).mean()


def test_rules_pick_the_thresholds_a_brute_force_search_picks():
    rng = np.random.default_rng(0)
    positive = rng.random(600) < 0.4
    score = np.clip(np.where(positive, rng.normal(0.65, 0.18, 600), rng.normal(0.4, 0.18, 600)), 0, 1)
    candidates = np.unique(score)
    sens_t = choose_threshold(positive, score, "sensitivity=0.95")
    assert rates(positive, score, sens_t)[0] >= 0.95
    assert all(
        rates(positive, score, t)[0] < 0.95 for t in candidates if t > sens_t
    )  # the most specific that finds 95 %
    spec_t = choose_threshold(positive, score, "specificity=0.9")
    assert rates(positive, score, spec_t)[1] >= 0.9
    assert all(rates(positive, score, t)[1] < 0.9 for t in candidates if t < spec_t)
    youden_t = choose_threshold(positive, score, "youden")
    best = max(sum(rates(positive, score, t)) for t in candidates)
    assert sum(rates(positive, score, youden_t)) == pytest.approx(best)
    fpr, tpr, _ = roc_curve(positive, score)
    assert sum(rates(positive, score, youden_t)) - 1 == pytest.approx(np.max(tpr - fpr))
    assert choose_threshold(positive, score, "0.3") == 0.3


@pytest.mark.parametrize("rule", ["sensitivity=1.5", "specificity=0", "bogus", "2", "sensitivity="])
def test_impossible_rules_are_one_line(rule):
    with pytest.raises(ConfigError, match=f"threshold {rule}: expected youden"):
        parse_rule(rule)


def test_wilson_interval_by_hand():
    successes, total, z = 8, 10, 1.959963984540054
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    assert wilson_interval(successes, total) == pytest.approx((centre - half, centre + half), abs=1e-12)
    figures = operating_point(np.array([1, 1, 1, 0, 0]), np.array([0.9, 0.6, 0.2, 0.7, 0.1]), 0.5)
    assert (figures["tp"], figures["fn"], figures["fp"], figures["tn"]) == (2, 1, 1, 1)
    assert (
        figures["sensitivity"] == pytest.approx(2 / 3)
        and figures["ppv"] == pytest.approx(2 / 3)
        and figures["npv"] == 0.5
    )


def test_screening_threshold_on_a_shifted_test_split(tmp_path, capsys):
    data = tmp_path / "data"
    write_medmnist_npz(data / "pneumoniamnist.npz", channels=1, n_classes=2, counts=(160, 60, 80))
    with np.load(data / "pneumoniamnist.npz") as archive:
        arrays = dict(archive)
    arrays["test_images"] = (arrays["test_images"] * 0.55).astype(np.uint8)  # another scanner: darker test images
    np.savez_compressed(data / "pneumoniamnist.npz", **arrays)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "pneumoniamnist",
                "--data-dir",
                str(data),
                "--no-verify",
                "--out",
                str(run),
                "--epochs",
                "3",
                "--quiet",
                "--threshold",
                "sensitivity=0.95",
            ]
        )
        == 0
    )
    capsys.readouterr()
    point = json.loads((run / "metrics.json").read_text())["operating_point"]
    assert (
        point["positive_class"] == "pneumonia"
        and point["rule"] == "sensitivity=0.95"
        and point["val"]["sensitivity"] >= 0.95
    )
    rows = [line.split(",") for line in (run / "predictions.csv").read_text().splitlines()[1:]]
    truth = np.array([int(r[1]) for r in rows])
    score = np.array([float(r[-1]) for r in rows])
    at_threshold = score >= point["threshold"]
    assert point["test"]["tp"] == int(np.sum(at_threshold & (truth == 1))) and point["test"]["fp"] == int(
        np.sum(at_threshold & (truth == 0))
    )
    assert not np.array_equal(at_threshold, score > 0.5), "the chosen threshold changes test decisions"

    image = tmp_path / "scan.npy"
    np.save(image, arrays["test_images"][:4])
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "p.json")]) == 0
    out, err = capsys.readouterr()
    assert (
        "decision" in out.splitlines()[0]
        and f"'pneumonia' when its probability is at least {point['threshold']:.4g}" in err
    )
    records = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert [r["decision"] for r in records] == [
        "pneumonia" if r["probabilities"]["pneumonia"] >= point["threshold"] else "not pneumonia" for r in records
    ]
    assert main(["export", str(run)]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "onnx.json")]) == 0
    onnx_records = json.loads((tmp_path / "onnx.json").read_text())["predictions"]
    assert [r["decision"] for r in onnx_records] == [r["decision"] for r in records]
