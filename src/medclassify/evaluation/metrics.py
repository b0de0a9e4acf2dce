"""Classification metrics as pure functions over arrays, computed with scikit-learn.

ACC and AUC follow MedMNIST's evaluator (``medmnist.evaluator.getACC`` / ``getAUC``):

* multi-class (and ordinal): ACC on the arg-max; AUC is the mean of the one-vs-rest AUCs;
* binary: the positive class's score (last column) thresholded at 0.5 for ACC, and its AUC;
* multi-label: per-label ACC (score > 0.5) and AUC, averaged over labels.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

MULTI_LABEL = "multi-label, binary-class"
BINARY = "binary-class"
THRESHOLD = 0.5


def predicted_labels(y_score: np.ndarray, task: str) -> np.ndarray:
    """Class decisions as MedMNIST makes them."""
    y_score = np.asarray(y_score)
    if task == MULTI_LABEL:
        return (y_score > THRESHOLD).astype(int)
    if task == BINARY:
        return (y_score[:, -1] > THRESHOLD).astype(int)
    return y_score.argmax(axis=1)


def _auc(y_true_binary: np.ndarray, score: np.ndarray) -> float:
    """AUC of one class or label; NaN when the labels hold only one class."""
    if np.unique(y_true_binary).size < 2:
        return math.nan
    return float(roc_auc_score(y_true_binary, score))


def per_class_auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> list[float]:
    if task == MULTI_LABEL:
        return [_auc(y_true[:, i], y_score[:, i]) for i in range(y_score.shape[1])]
    if task == BINARY:
        return [_auc(y_true == 1, y_score[:, -1])]
    return [_auc(y_true == i, y_score[:, i]) for i in range(y_score.shape[1])]


def auc_score(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """MedMNIST's AUC; classes absent from ``y_true`` (possible on a small split) are left out."""
    values = [v for v in per_class_auc(np.asarray(y_true), np.asarray(y_score), task) if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def accuracy(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    y_true, y_pred = np.asarray(y_true), predicted_labels(y_score, task)
    if task == MULTI_LABEL:
        return float(np.mean([accuracy_score(y_true[:, i], y_pred[:, i]) for i in range(y_true.shape[1])]))
    return float(accuracy_score(y_true, y_pred))


def macro_f1(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    y_pred = predicted_labels(y_score, task)
    labels = None if task == MULTI_LABEL else list(range(np.asarray(y_score).shape[1]))
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def classification_metrics(
    y_true: np.ndarray, y_score: np.ndarray, task: str, class_names: list[str] | None = None
) -> dict:
    """Everything a run reports for one split.

    ``y_true``: labels (N,) or, multi-label, an indicator matrix (N, L); ``y_score``: class
    probabilities (N, K).
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    n_classes = y_score.shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(n_classes)]
    y_pred = predicted_labels(y_score, task)
    # per class by position, not by name: a class may be called 'accuracy' or 'macro avg'
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=list(range(n_classes)), zero_division=0)
    aucs = per_class_auc(y_true, y_score, task)
    result = {
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
                **({"auc": aucs[i]} if task != BINARY else {}),
            }
            for i, name in enumerate(names)
        },
    }
    if task == MULTI_LABEL:
        result["confusion_matrix"] = multilabel_confusion_matrix(y_true, y_pred).tolist()
    else:
        matrix = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
        result["confusion_matrix"] = matrix.tolist()
    if task == BINARY:
        tn, fp, fn, tp = matrix.ravel()
        result["sensitivity"] = float(tp / (tp + fn)) if tp + fn else math.nan
        result["specificity"] = float(tn / (tn + fp)) if tn + fp else math.nan
    return result
