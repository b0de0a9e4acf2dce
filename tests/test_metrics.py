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
