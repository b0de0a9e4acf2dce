"""Evaluate a model on the val and test splits and write ``metrics.json`` and ``predictions.csv``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import LoadedDataset, Normalization
from ..io import PROBABILITY_FORMAT, atomic_path, cannot_write, make_folder, probability_columns, write_csv, write_json
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
        y_true, y_prob, loss = predict_split_sharded(
            model,
            data.splits[split],
            batch_size,
            normalization,
            device,
            data.multi_label,
            amp,
            tta_orientation,
            context,
        )
        metrics[split] = {"loss": loss, **classification_metrics(y_true, y_prob, data.task, data.class_names)}
        outputs[split] = (y_true, y_prob)
    return metrics, outputs


def _label_text(row: np.ndarray, multi_label: bool) -> str | int:
    return ";".join(str(i) for i in np.flatnonzero(row)) if multi_label else int(row)


def write_predictions(
    path: Path, y_true: np.ndarray, y_prob: np.ndarray, data: LoadedDataset, split: str = "test"
) -> None:
    """One row per sample: its index in the split (image folders: also its file), true and
    predicted class indices (multi-label: the positive labels joined by ';'), and the probability of
    every class, written so that it reads back to the same float32 value."""
    y_pred = predicted_labels(y_prob, data.task)
    files = data.source.get("files", {}).get(split)
    header = ["index", *(["file"] if files else []), "true", "predicted"] + probability_columns(data.class_names)
    rows = (
        [
            i,
            *([files[i]] if files else []),
            _label_text(t, data.multi_label),
            _label_text(p, data.multi_label),
            *(format(v, PROBABILITY_FORMAT) for v in prob),
        ]
        for i, (t, p, prob) in enumerate(zip(y_true, y_pred, y_prob))
    )
    write_csv(path, header, rows)


MEDMNIST_RESULTS = "medmnist"  # the run's folder of MedMNIST-format result files


def write_medmnist_results(run_dir: Path, outputs: dict, data: LoadedDataset) -> list[Path]:
    """Each split's scores in MedMNIST's own result format (``{flag}{_size}_{split}_[AUC]..._[ACC]...@medclassify.csv``,
    the name and figures as ``medmnist.Evaluator`` gives them), so that ``python -m medmnist evaluate``
    reads them. The labels are those in memory: the data file is not read again (it may sit behind a
    link of another name). MedMNIST datasets only; nothing for image folders or the synthetic sample."""
    from types import SimpleNamespace

    import pandas as pd
    from medmnist import Evaluator
    from medmnist.evaluator import Metrics, getACC, getAUC
    from medmnist.info import INFO

    if data.source.get("kind") != "npz" or data.name not in INFO:
        return []
    folder = make_folder(run_dir / MEDMNIST_RESULTS)
    task = INFO[data.name]["task"]
    size_flag = "" if data.size == 28 else f"_{data.size}"
    written = []
    for split, (y_true, y_prob) in outputs.items():
        labels = np.asarray(y_true).reshape(len(y_true), -1)  # MedMNIST's N x 1 (or N x labels) layout
        metrics = Metrics(getAUC(labels, y_prob, task), getACC(labels, y_prob, task))
        naming = SimpleNamespace(flag=data.name, size_flag=size_flag, split=split)
        name = Evaluator.get_standard_evaluation_filename(naming, metrics, "medclassify")
        prefix = f"{data.name}{size_flag}_{split}_"
        try:
            with atomic_path(folder / name) as tmp:
                pd.DataFrame(y_prob).to_csv(tmp, header=None)
            for old in folder.glob(f"{prefix}*@medclassify.csv"):  # the name carries the figures: replace, not add
                if old.name != name:
                    old.unlink()
        except OSError as exc:
            raise cannot_write(folder, exc) from None
        written.append(folder / name)
    return written


def write_results(
    run_dir: Path,
    metrics: dict,
    outputs: dict,
    data: LoadedDataset,
    extra: dict | None = None,
    metrics_file: str = "metrics.json",
    predictions_file: str = "predictions.csv",
    medmnist_files: bool = True,
) -> None:
    """``metrics.json``, ``predictions.csv`` (test split) and, with ``medmnist_files``, the
    MedMNIST-format files of every split in ``outputs``."""
    write_json(run_dir / metrics_file, {**(extra or {}), **metrics})
    y_true, y_prob = outputs["test"]
    write_predictions(run_dir / predictions_file, y_true, y_prob, data)
    if medmnist_files:
        write_medmnist_results(run_dir, outputs, data)


def summary_line(split: str, metrics: Mapping[str, Any]) -> str:
    """One printed line of a split's accuracy, macro-F1 and macro-AUC (and sensitivity/specificity when binary)."""
    line = f"{split}: acc {metrics['acc']:.4f}  macro-F1 {metrics['f1_macro']:.4f}  macro-AUC {metrics['auc']:.4f}"
    if "sensitivity" in metrics:
        line += f"  sensitivity {metrics['sensitivity']:.4f}  specificity {metrics['specificity']:.4f}"
    return line + f"  (n={metrics['n']})"
