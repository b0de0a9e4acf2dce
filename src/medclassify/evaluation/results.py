"""Evaluate a model on the val and test splits and write ``metrics.json`` and ``predictions.csv``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import LoadedDataset, Normalization
from ..io import write_csv, write_json
from .metrics import classification_metrics, predicted_labels
from .predict import predict_split_sharded


def evaluate_model(
    model: nn.Module,
    data: LoadedDataset,
    normalization: Normalization,
    device: torch.device,
    batch_size: int = 256,
    amp: bool = False,
    splits: tuple[str, ...] = ("val", "test"),
    tta_orientation: str | None = None,
    context=None,
) -> tuple[dict, dict]:
    """Returns ``(metrics per split, (y_true, y_prob) per split)``; with ``context`` (several
    processes) every process predicts its share and gets the gathered whole."""
    metrics, outputs = {}, {}
    for split in splits:
        y_true, y_prob, loss = predict_split_sharded(model, data.splits[split], batch_size, normalization, device,
                                                     data.multi_label, amp, tta_orientation, context)
        metrics[split] = {"loss": loss, **classification_metrics(y_true, y_prob, data.task, data.class_names)}
        outputs[split] = (y_true, y_prob)
    return metrics, outputs


def _label_text(row: np.ndarray, multi_label: bool) -> str | int:
    return ";".join(str(i) for i in np.flatnonzero(row)) if multi_label else int(row)


def write_predictions(path: Path, y_true: np.ndarray, y_prob: np.ndarray, data: LoadedDataset) -> None:
    """One row per sample: its index in the split, true and predicted class indices (multi-label:
    the positive labels joined by ';'), and the probability of every class."""
    y_pred = predicted_labels(y_prob, data.task)
    header = ["index", "true", "predicted"] + [f"prob_{name}" for name in data.class_names]
    rows = (
        [i, _label_text(t, data.multi_label), _label_text(p, data.multi_label), *(f"{v:.6g}" for v in prob)]
        for i, (t, p, prob) in enumerate(zip(y_true, y_pred, y_prob))
    )
    write_csv(path, header, rows)


def write_results(run_dir: Path, metrics: dict, outputs: dict, data: LoadedDataset, extra: dict | None = None,
                  metrics_file: str = "metrics.json", predictions_file: str = "predictions.csv") -> None:
    write_json(run_dir / metrics_file, {**(extra or {}), **metrics})
    y_true, y_prob = outputs["test"]
    write_predictions(run_dir / predictions_file, y_true, y_prob, data)


def summary_line(split: str, metrics: dict) -> str:
    line = f"{split}: acc {metrics['acc']:.4f}  macro-F1 {metrics['f1_macro']:.4f}  macro-AUC {metrics['auc']:.4f}"
    if "sensitivity" in metrics:
        line += f"  sensitivity {metrics['sensitivity']:.4f}  specificity {metrics['specificity']:.4f}"
    return line + f"  (n={metrics['n']})"
