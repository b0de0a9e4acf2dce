import math

import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import f1_score, roc_auc_score

from medclassify.evaluation import accuracy, auc_score, classification_metrics, macro_f1


def random_scores(rng, n, k):
    logits = rng.normal(size=(n, k))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_multiclass_matches_medmnist_and_sklearn():
    rng = np.random.default_rng(0)
    y_true = np.arange(300) % 5
    y_score = random_scores(rng, 300, 5)
    y_score[np.arange(300), y_true] += 0.3 * rng.random(300)  # better than chance
    y_score /= y_score.sum(axis=1, keepdims=True)
    metrics = classification_metrics(y_true, y_score, "multi-class")
    assert metrics["acc"] == pytest.approx(getACC(y_true[:, None], y_score, "multi-class"), abs=1e-12)
    assert metrics["auc"] == pytest.approx(getAUC(y_true[:, None], y_score, "multi-class"), abs=1e-12)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y_true, y_score, multi_class="ovr"), abs=1e-12)
    assert metrics["f1_macro"] == pytest.approx(f1_score(y_true, y_score.argmax(1), average="macro"))
    assert np.array(metrics["confusion_matrix"]).sum() == 300 and np.trace(metrics["confusion_matrix"]) == round(
        metrics["acc"] * 300
    )


def test_binary_uses_the_positive_class_score_like_medmnist():
    y_true = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p1 = np.array([0.1, 0.6, 0.3, 0.8, 0.4, 0.9, 0.7, 0.2])
    y_score = np.stack([1 - p1, p1], axis=1)
    metrics = classification_metrics(y_true, y_score, "binary-class", ["normal", "pneumonia"])
    assert metrics["acc"] == getACC(y_true, y_score, "binary-class") == 6 / 8
    assert metrics["auc"] == getAUC(y_true, y_score, "binary-class") == roc_auc_score(y_true, p1)
    # hand count: TP = 3 (0.8, 0.9, 0.7), FN = 1 (0.4), TN = 3, FP = 1 (0.6)
    assert metrics["confusion_matrix"] == [[3, 1], [1, 3]]
    assert metrics["sensitivity"] == 0.75 and metrics["specificity"] == 0.75
    assert metrics["per_class"]["pneumonia"]["recall"] == 0.75 and metrics["per_class"]["normal"]["support"] == 4


def test_multilabel_matches_medmnist():
    rng = np.random.default_rng(1)
    y_true = (rng.random((200, 4)) < 0.4).astype(int)
    y_score = np.clip(y_true * 0.3 + rng.random((200, 4)) * 0.7, 0, 1)
    assert accuracy(y_true, y_score, "multi-label, binary-class") == pytest.approx(
        getACC(y_true, y_score, "multi-label, binary-class")
    )
    assert auc_score(y_true, y_score, "multi-label, binary-class") == pytest.approx(
        getAUC(y_true, y_score, "multi-label, binary-class")
    )
    assert macro_f1(y_true, y_score, "multi-label, binary-class") == pytest.approx(
        f1_score(y_true, y_score > 0.5, average="macro")
    )
    metrics = classification_metrics(y_true, y_score, "multi-label, binary-class")
    assert np.array(metrics["confusion_matrix"]).shape == (4, 2, 2)


def test_ordinal_regression_is_scored_as_multiclass_like_medmnist():
    rng = np.random.default_rng(2)
    y_true = np.arange(100) % 5
    y_score = random_scores(rng, 100, 5)
    assert accuracy(y_true, y_score, "ordinal-regression") == getACC(y_true, y_score, "ordinal-regression")
    assert auc_score(y_true, y_score, "ordinal-regression") == pytest.approx(
        getAUC(y_true, y_score, "ordinal-regression")
    )


def test_auc_leaves_out_classes_absent_from_a_small_split():
    y_true = np.array([0, 0, 1, 1])
    y_score = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]])
    expected = np.mean([roc_auc_score(y_true == 0, y_score[:, 0]), roc_auc_score(y_true == 1, y_score[:, 1])])
    assert auc_score(y_true, y_score, "multi-class") == pytest.approx(expected)
    assert math.isnan(classification_metrics(y_true, y_score, "multi-class")["per_class"]["2"]["auc"])


@pytest.mark.parametrize("task, k", [("multi-class", 6), ("binary-class", 2), ("ordinal-regression", 5)])
def test_calibration_and_agreement_figures_match_scikit_learn_and_torchmetrics(task, k):
    import torch
    from sklearn.metrics import (
        balanced_accuracy_score,
        brier_score_loss,
        cohen_kappa_score,
        log_loss,
        matthews_corrcoef,
    )
    from torchmetrics.classification import MulticlassCalibrationError

    from medclassify.evaluation.metrics import calibration_metrics, predicted_labels

    rng = np.random.default_rng(3)
    n = 400
    y = rng.integers(0, k, n)
    scores = rng.dirichlet(np.ones(k) * 0.7, n)
    scores[np.arange(n // 2), y[: n // 2]] += 2.0  # half the images leaning towards their class
    scores /= scores.sum(1, keepdims=True)
    got = calibration_metrics(y, scores, task)
    decided = predicted_labels(scores, task)
    brier = (
        brier_score_loss(y, scores[:, 1])
        if task == "binary-class"
        else brier_score_loss(y, scores, labels=list(range(k)))
    )
    assert got["brier"] == pytest.approx(brier, abs=1e-12)
    assert got["nll"] == pytest.approx(log_loss(y, scores, labels=list(range(k))), abs=1e-9)
    assert got["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, decided), abs=1e-12)
    assert got["mcc"] == pytest.approx(matthews_corrcoef(y, decided), abs=1e-12)
    kappa = cohen_kappa_score(y, decided, weights="quadratic" if task == "ordinal-regression" else None)
    assert got["kappa"] == pytest.approx(kappa, abs=1e-12)
    if task != "binary-class":  # the top-label ECE of torchmetrics (binary: the same figure over both columns)
        ece = MulticlassCalibrationError(num_classes=k, n_bins=15, norm="l1")(
            torch.tensor(scores), torch.tensor(y)
        ).item()
        assert got["ece"] == pytest.approx(ece, abs=1e-6)


def test_expected_calibration_error_by_hand():
    from medclassify.evaluation.metrics import calibration_error

    # bins of width 1/15: 0.95 and 0.97 share the last bin (accuracy 1/2, confidence 0.96); 0.5 is alone (accuracy 1)
    assert calibration_error(np.array([0.95, 0.97, 0.5]), np.array([1, 0, 1])) == pytest.approx(
        (2 * abs(0.5 - 0.96) + abs(1 - 0.5)) / 3
    )
    # class-wise ECE of a perfectly confident, perfectly right model is 0
    from medclassify.evaluation.metrics import calibration_metrics

    perfect = calibration_metrics(np.array([0, 1, 2]), np.eye(3), "multi-class")
    assert perfect["ece"] == 0 and perfect["classwise_ece"] == 0 and perfect["brier"] == 0 and perfect["kappa"] == 1


def test_bootstrap_fast_calibration_equals_the_metric_functions():
    from medclassify.evaluation.metrics import calibration_metrics
    from medclassify.evaluation.stats import Side

    rng = np.random.default_rng(1)
    for task, k in (("multi-class", 5), ("binary-class", 2), ("ordinal-regression", 4)):
        n = 300
        y = np.arange(n) % k
        scores = [rng.dirichlet(np.ones(k), n) for _ in range(2)]
        index = rng.integers(0, n, n)
        fast = Side(y, scores, task).resampled_calibration(index)
        for name, value in fast.items():
            assert value == pytest.approx(
                np.mean([calibration_metrics(y[index], s[index], task)[name] for s in scores]), abs=1e-12
            )


def test_debiased_calibration_error_is_the_expectation_kumar_et_al_sample():
    """The closed form equals the estimator of Kumar et al.'s code, 2 * plug-in - mean of the plug-in
    gaps with each bin's accuracy drawn from its normal approximation (here sampled 400k times)."""
    from medclassify.evaluation.metrics import calibration_errors

    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.4, 1.0, 200)
    correct = rng.random(200) < confidence - 0.05
    plug_in, debiased = calibration_errors(confidence, correct)

    bins = np.clip(np.searchsorted(np.linspace(0, 1, 16), confidence, side="right") - 1, 0, 14)
    filled = np.unique(bins)
    n = np.array([np.sum(bins == b) for b in filled])
    accuracy = np.array([correct[bins == b].mean() for b in filled])
    mean_confidence = np.array([confidence[bins == b].mean() for b in filled])
    draws = rng.normal(accuracy, np.sqrt(accuracy * (1 - accuracy) / n), (400_000, len(n)))
    sampled = 2 * plug_in - np.mean(np.abs(draws - mean_confidence) @ n / 200)
    assert plug_in == pytest.approx(np.abs(accuracy - mean_confidence) @ n / 200)
    assert debiased == pytest.approx(sampled, abs=2e-4) and debiased < plug_in


def test_every_reported_estimate_lies_inside_its_interval_on_small_test_splits():
    """150 test images, three seeds, many draws: each figure of the results and ensemble rows (ACC,
    AUC, F1, per-class AUC, calibration, agreement) lies inside its own 95% interval."""
    from medclassify.evaluation.metrics import classification_metrics
    from medclassify.evaluation.stats import Side
    from medclassify.experiments.results import Experiment, ensemble_rows, results_rows

    outside = []
    for draw in range(6):
        rng = np.random.default_rng(draw)
        k = (2, 4, 8)[draw % 3]
        y = rng.integers(0, k, 150)
        task = "binary-class" if k == 2 else "multi-class"
        # over-confident and partly right: the shape of a small network's test probabilities
        scores = []
        for _ in range(3):
            logits = rng.normal(0, 1, (150, k)) + 2.5 * np.eye(k)[y] * (rng.random(150) < 0.8)[:, None]
            scores.append(np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True))
        records = [
            {"config": {"seed": s}, "data": {"task": task, "class_names": [f"c{i}" for i in range(k)]}}
            for s in range(3)
        ]
        metrics = [{"test": classification_metrics(y, s, task), "best_epoch": 1} for s in scores]
        e = Experiment(
            "bloodmnist",
            28,
            "paper-cnn",
            [],
            metrics,
            records,
            [[{"seconds": "1", "images_per_s": "1"}]] * 3,
            Side(y, scores, task),
        )
        rows = results_rows([e], n_boot=150)
        for row in rows + ensemble_rows([e], rows, n_boot=150):
            for key in row:
                if key.endswith("_ci_low"):
                    name = key.removesuffix("_ci_low")
                    if not row[key] - 1e-12 <= row[name] <= row[f"{name}_ci_high"] + 1e-12:
                        outside.append((draw, row["experiment"], name, row[key], row[name], row[f"{name}_ci_high"]))
    assert outside == []


def test_the_ece_interval_covers_the_true_error_of_an_over_confident_model():
    """A small run of bench/ece_interval_coverage.py: the report's interval (debiased ECE, basic
    bootstrap) holds its estimate on every split and the true error on most of them; the plug-in
    ECE's percentile interval that reports printed before misses it on 150 images (the full run's
    figures, the calibrated case included, are in the bench script's output)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "bench" / "ece_interval_coverage.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "--replicates",
            "40",
            "--resamples",
            "60",
            "--sizes",
            "150",
            "--cases",
            "over-confident",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    (result,) = json.loads(done.stdout)["results"]
    assert result["debiased_basic"]["holds_estimate"] == 1.0 and result["debiased_basic"]["coverage"] >= 0.85
    assert result["plug_in_percentile"]["coverage"] <= 0.5
