"""Classification metrics as pure functions over arrays, computed with scikit-learn.

ACC and AUC follow MedMNIST's evaluator (``medmnist.evaluator.getACC`` / ``getAUC``):

* multi-class (and ordinal): ACC on the arg-max; AUC is the mean of the one-vs-rest AUCs;
* binary: the positive class's score (last column) thresholded at 0.5 for ACC, and its AUC;
* multi-label: per-label ACC (score > 0.5) and AUC, averaged over labels.

Calibration and agreement (:func:`calibration_metrics`), on the same class decisions:

* Brier score: multi-class, the mean over images of the squared distance between the probability
  vector and the one-hot label (scikit-learn's multi-class ``brier_score_loss``); binary, that of the
  positive class's probability; multi-label, per label, averaged;
* NLL: the mean negative log-likelihood of the true class (scikit-learn's ``log_loss``, computed
  directly so that scores that sum to 1 only within float32 rounding are taken as they are;
  multi-label: per label);
* ECE: expected calibration error of the top-label confidence over 15 equal-width bins (bins
  [lo, hi), as torchmetrics' ``MulticlassCalibrationError``); class-wise ECE: the ECE of each
  class's one-vs-rest probability, averaged over classes; each also debiased
  (:func:`calibration_errors`), which is what a study reports, since the plug-in figure is
  biased upward on small test splits;
* balanced accuracy, Matthews correlation and Cohen's kappa (quadratic weights for ordinal
  regression, e.g. RetinaMNIST) on the class decisions (multi-label: per label, averaged).
"""

from __future__ import annotations

import math
from typing import Any, NotRequired, TypedDict, cast

import numpy as np
from scipy.stats import norm
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    log_loss,
    matthews_corrcoef,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from ..tasks import Task

THRESHOLD = 0.5
ECE_BINS = 15
CALIBRATION_METRICS = (
    "brier",
    "nll",
    "ece",
    "ece_debiased",
    "classwise_ece",
    "classwise_ece_debiased",
    "balanced_acc",
    "mcc",
    "kappa",
)
# each debiased calibration error and the plug-in figure whose bias it removes
PLUG_IN_OF = {"ece_debiased": "ece", "classwise_ece_debiased": "classwise_ece"}
# what a study reports with a 95% interval: the plug-in ECEs have none that holds them (see stats)
REPORTED_CALIBRATION_METRICS = tuple(name for name in CALIBRATION_METRICS if name not in PLUG_IN_OF.values())


def predicted_labels(y_score: np.ndarray, task: str) -> np.ndarray:
    """Class decisions as MedMNIST makes them."""
    y_score = np.asarray(y_score)
    if task == Task.MULTI_LABEL:
        return (y_score > THRESHOLD).astype(int)
    if task == Task.BINARY:
        return (y_score[:, -1] > THRESHOLD).astype(int)
    return y_score.argmax(axis=1)


def _auc(y_true_binary: np.ndarray, score: np.ndarray) -> float:
    """AUC of one class or label; NaN when the labels hold only one class."""
    if np.unique(y_true_binary).size < 2:
        return math.nan
    return float(roc_auc_score(y_true_binary, score))


def per_class_auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> list[float]:
    """One ROC AUC per class (one-vs-rest; binary tasks: one value), NaN where a class has one label only."""
    if task == Task.MULTI_LABEL:
        return [_auc(y_true[:, i], y_score[:, i]) for i in range(y_score.shape[1])]
    if task == Task.BINARY:
        return [_auc(y_true == 1, y_score[:, -1])]
    return [_auc(y_true == i, y_score[:, i]) for i in range(y_score.shape[1])]


def auc_score(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """MedMNIST's AUC; classes absent from ``y_true`` (possible on a small split) are left out."""
    values = [v for v in per_class_auc(np.asarray(y_true), np.asarray(y_score), task) if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def accuracy(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """Accuracy of the predicted labels (multi-label: the mean of the per-label accuracies)."""
    y_true, y_pred = np.asarray(y_true), predicted_labels(y_score, task)
    if task == Task.MULTI_LABEL:
        return float(np.mean([accuracy_score(y_true[:, i], y_pred[:, i]) for i in range(y_true.shape[1])]))
    return float(accuracy_score(y_true, y_pred))


def macro_f1(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """F1 averaged over the classes with equal weight (absent classes count as 0)."""
    y_pred = predicted_labels(y_score, task)
    labels = None if task == Task.MULTI_LABEL else list(range(np.asarray(y_score).shape[1]))
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def _binned(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin [lo, hi) (1.0 in the last): image count, correct count, confidence sum."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    bins = np.clip(np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1), confidence, side="right") - 1, 0, n_bins - 1)
    return (
        np.bincount(bins, minlength=n_bins),
        np.bincount(bins, correct, n_bins),
        np.bincount(bins, confidence, n_bins),
    )


def calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error: over equal-width confidence bins [lo, hi) (1.0 in the last), the
    share of images in the bin times |accuracy - mean confidence| of the bin."""
    return calibration_errors(confidence, correct, n_bins)[0]


def calibration_errors(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> tuple[float, float]:
    """The plug-in expected calibration error (:func:`calibration_error`) and the same less its
    upward bias (Kumar, Liang & Ma, "Verified Uncertainty Calibration", NeurIPS 2019), from one
    binning. A bin's accuracy, measured on few images, misses its confidence even where the model
    is calibrated, so the plug-in gap |acc - conf| is too large on average. Each bin's gap is
    replaced by 2 |acc - conf| - E|A - conf|, A ~ N(acc, acc (1 - acc) / n), which is the estimator
    of the paper's code with the expectation taken in closed form instead of by sampling; the
    debiased sum is floored at 0 (an error is never negative)."""
    if not len(confidence):
        return float("nan"), float("nan")
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    bins = np.clip(np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1), confidence, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    filled = counts > 0
    n = counts[filled]
    accuracy = np.bincount(bins, correct, n_bins)[filled] / n
    gap = accuracy - np.bincount(bins, confidence, n_bins)[filled] / n
    spread = np.sqrt(accuracy * (1 - accuracy) / n)
    safe = np.where(spread > 0, spread, 1.0)  # a bin all right or all wrong has no spread: E|A - conf| = |gap|
    expected = np.where(
        spread > 0,
        spread * np.sqrt(2 / np.pi) * np.exp(-(gap**2) / (2 * safe**2)) + gap * (1 - 2 * norm.cdf(-gap / safe)),
        np.abs(gap),
    )
    plug_in = float((n * np.abs(gap)).sum() / len(confidence))
    return plug_in, max(0.0, float((n * (2 * np.abs(gap) - expected)).sum() / len(confidence)))


def _binary_scores(y: np.ndarray, p: np.ndarray) -> dict:
    """The calibration and agreement figures of one binary decision at threshold 0.5."""
    decided = (p > THRESHOLD).astype(int)
    return {
        "brier": float(np.mean((p - y) ** 2)),
        "nll": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
        **dict(zip(("ece", "ece_debiased"), calibration_errors(np.maximum(p, 1 - p), decided == y))),
        "balanced_acc": float(balanced_accuracy_score(y, decided)) if np.unique(y).size > 1 else float("nan"),
        "mcc": float(matthews_corrcoef(y, decided)),
        "kappa": float(cohen_kappa_score(y, decided, labels=[0, 1])),
    }


def calibration_metrics(y_true: np.ndarray, y_score: np.ndarray, task: str) -> dict:
    """Brier score, NLL, ECE, class-wise ECE, balanced accuracy, Matthews correlation and Cohen's
    kappa (see the module's description for each definition)."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if task == Task.MULTI_LABEL:
        per_label = [_binary_scores(y_true[:, i], y_score[:, i]) for i in range(y_score.shape[1])]
        result = {key: float(np.nanmean([r[key] for r in per_label])) for key in per_label[0]}
        return {**result, "classwise_ece": result["ece"], "classwise_ece_debiased": result["ece_debiased"]}
    k = y_score.shape[1]
    y_pred = predicted_labels(y_score, task)
    onehot = np.eye(k)[y_true]
    top_label = calibration_errors(y_score[np.arange(len(y_pred)), y_pred], y_pred == y_true)
    one_vs_rest = np.array([calibration_errors(y_score[:, c], onehot[:, c] == 1) for c in range(k)])
    result = {
        # computed directly (= brier_score_loss, tested): float32 rows sum to 1 only within rounding
        "brier": float(np.mean((y_score[:, -1] - y_true) ** 2))
        if task == Task.BINARY
        else float(np.mean(((y_score - onehot) ** 2).sum(axis=1))),
        "nll": float(
            -np.mean(np.log(np.clip(y_score[np.arange(len(y_true)), y_true], 1e-15, 1.0)))
        ),  # = log_loss (tested)
        "ece": top_label[0],
        "ece_debiased": top_label[1],
        "classwise_ece": float(one_vs_rest[:, 0].mean()),
        "classwise_ece_debiased": float(one_vs_rest[:, 1].mean()),
        "balanced_acc": float(balanced_accuracy_score(y_true, y_pred)),
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
        "kappa": float(
            cohen_kappa_score(
                y_true, y_pred, labels=list(range(k)), weights="quadratic" if task == Task.ORDINAL else None
            )
        ),
    }
    return result


class ClassReport(TypedDict):
    precision: float
    recall: float
    f1: float
    support: int
    auc: NotRequired[float]  # not for binary tasks: their one AUC is the split's


class SplitMetrics(TypedDict):
    """What :func:`classification_metrics` reports for one split (metrics.json's ``val`` and ``test``)."""

    n: int
    acc: float
    auc: float
    f1_macro: float
    per_class: dict[str, ClassReport]
    confusion_matrix: list
    brier: float
    nll: float
    ece: float
    ece_debiased: float
    classwise_ece: float
    classwise_ece_debiased: float
    balanced_acc: float
    mcc: float
    kappa: float
    sensitivity: NotRequired[float]  # binary tasks
    specificity: NotRequired[float]


def classification_metrics(
    y_true: np.ndarray, y_score: np.ndarray, task: str, class_names: list[str] | None = None
) -> SplitMetrics:
    """Everything a run reports for one split, with scikit-learn's definitions (MedMNIST's).

    Args:
        y_true: labels (N,) or, multi-label, an indicator matrix (N, L).
        y_score: class probabilities (N, K).
        task: the dataset's task (a :class:`.Task` value: ``multi-class``, ``binary-class``, ...).
        class_names: names for the per-class figures (default: the class indices).

    Returns:
        Accuracy, macro-AUC, macro-F1, per-class precision, recall, F1 and AUC, the confusion
        matrix, calibration errors (plug-in and debiased ECE, Brier, NLL) and, binary, sensitivity
        and specificity.
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    n_classes = y_score.shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(n_classes)]
    y_pred = predicted_labels(y_score, task)
    # per class by position, not by name: a class may be called 'accuracy' or 'macro avg'
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(n_classes)), zero_division=0
    )
    aucs = per_class_auc(y_true, y_score, task)
    result: dict[str, Any] = {
        "n": int(y_true.shape[0]),
        "acc": accuracy(y_true, y_score, task),
        "auc": auc_score(y_true, y_score, task),
        "f1_macro": macro_f1(y_true, y_score, task),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                **({"auc": aucs[i]} if task != Task.BINARY else {}),
            }
            for i, name in enumerate(names)
        },
    }
    if task == Task.MULTI_LABEL:
        result["confusion_matrix"] = multilabel_confusion_matrix(y_true, y_pred).tolist()
    else:
        matrix = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
        result["confusion_matrix"] = matrix.tolist()
    result.update(calibration_metrics(y_true, y_score, task))
    if task == Task.BINARY:
        tn, fp, fn, tp = matrix.ravel()
        result["sensitivity"] = float(tp / (tp + fn)) if tp + fn else math.nan
        result["specificity"] = float(tn / (tn + fp)) if tn + fp else math.nan
    return cast(SplitMetrics, result)
