"""Evaluation: metric functions over arrays, model predictions, and the files a run reports."""

from .metrics import accuracy, auc_score, classification_metrics, macro_f1, predicted_labels
from .predict import loss_function, predict_split, predict_split_sharded, probabilities
from .results import evaluate_model, summary_line, write_predictions, write_results

__all__ = [
    "accuracy",
    "auc_score",
    "classification_metrics",
    "evaluate_model",
    "loss_function",
    "macro_f1",
    "predict_split",
    "predict_split_sharded",
    "predicted_labels",
    "probabilities",
    "summary_line",
    "write_predictions",
    "write_results",
]
