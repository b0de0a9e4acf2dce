"""Temperature scaling (Guo et al., 2017): one number T, fitted on the validation split, by which the
model's logits are divided before the softmax (or sigmoid). It leaves every class decision as it was
and makes the probabilities match how often the model is right.

``calibrate_run`` fits T for a run folder, stores it in the model bundle (``best.pt``), where
``predict``, ``serve``, ``explain`` and the exported ONNX/TorchScript graph apply it, and records the
raw and the calibrated figures side by side in ``metrics.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from ..errors import CheckpointError, ConfigError
from ..io import folder_lock, write_json
from .metrics import CALIBRATION_METRICS, classification_metrics

CALIBRATION_METHODS = ("none", "temperature")
# T is searched on a log scale within these bounds: enough for any trained network, and a bound
# keeps a degenerate validation split (all right, say) from sending T to infinity.
TEMPERATURE_RANGE = (0.05, 20.0)


def _probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    logits = logits.astype(np.float64)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, y_true: np.ndarray, multi_label: bool, temperature: float = 1.0) -> float:
    """Mean NLL of the labels under ``softmax(logits / T)`` (multi-label: per-label sigmoid)."""
    scaled = logits.astype(np.float64) / temperature
    if multi_label:  # log(1 + e^-z) for positives, log(1 + e^z) for negatives
        return float(np.mean(np.logaddexp(0.0, -scaled) * y_true + np.logaddexp(0.0, scaled) * (1 - y_true)))
    top = scaled.max(axis=1, keepdims=True)
    log_normaliser = (top + np.log(np.exp(scaled - top).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(log_normaliser - scaled[np.arange(len(y_true)), y_true]))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, multi_label: bool = False) -> float:
    """The T that minimises the NLL of ``y_true`` under ``logits / T``."""
    low, high = np.log(TEMPERATURE_RANGE)
    best = minimize_scalar(lambda log_t: negative_log_likelihood(logits, y_true, multi_label, float(np.exp(log_t))),
                           bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(best.x))


def calibrate_run(run_dir: str | Path, method: str = "temperature", data_dir: str | None = None, device: str = "auto") -> dict:
    """Fit ``method`` on the run's validation split, store it in ``best.pt`` and add to
    ``metrics.json`` a ``calibrated`` section: the temperature, the calibrated val/test figures and,
    from the same logits, the ``uncalibrated`` ones. Returns the record with the test figures before
    and after."""
    from .run import read_run_config

    if method not in CALIBRATION_METHODS or method == "none":
        raise ConfigError(f"--calibrate {method}: expected temperature")
    run_dir = Path(run_dir)
    config = read_run_config(run_dir, data_dir)
    with folder_lock(run_dir, "calibrate"):
        return calibrate_held_run(run_dir, config, method, device)


def calibrate_held_run(run_dir: Path, config, method: str = "temperature", device: str = "auto") -> dict:
    """:func:`calibrate_run` for a run folder this process already holds (``train --calibrate``)."""
    from ..inference.predictor import Predictor
    from ..reporting.figures import reliability_diagram
    from ..training.checkpoint import load_checkpoint, save_checkpoint
    from ..training.trainer import load_run_data

    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise CheckpointError(f"{run_dir}: no metrics.json; calibrate a finished run")
    predictor = Predictor.from_run(run_dir, device=device, backend="torch", calibrated=False)
    data = load_run_data(config)
    split_logits = {split: predictor.logits_of_pixels(data.splits[split].images.numpy()) for split in ("val", "test")}
    labels = {split: data.splits[split].labels.numpy() for split in ("val", "test")}
    temperature = fit_temperature(split_logits["val"], labels["val"], data.multi_label)
    record = {
        "method": method, "temperature": temperature, "fitted_on": "val",
        "val_nll_before": negative_log_likelihood(split_logits["val"], labels["val"], data.multi_label),
        "val_nll_after": negative_log_likelihood(split_logits["val"], labels["val"], data.multi_label, temperature),
    }
    def figures(t: float) -> dict:
        return {split: classification_metrics(labels[split], _probabilities(split_logits[split] / t, data.multi_label), data.task,
                                              data.class_names) for split in ("val", "test")}

    # both from the same logits of the bundle's model (no test-time augmentation), so that they compare
    raw, calibrated = figures(1.0), figures(temperature)
    metrics = json.loads(metrics_path.read_text())
    metrics["calibrated"] = {**record, **calibrated, "uncalibrated": raw}
    bundle = load_checkpoint(run_dir / "best.pt")
    bundle["calibration"] = record
    save_checkpoint(run_dir / "best.pt", bundle)
    write_json(metrics_path, metrics)
    reliability_diagram(labels["test"], _probabilities(split_logits["test"], data.multi_label),
                        _probabilities(split_logits["test"] / temperature, data.multi_label), data.task, run_dir / "reliability", temperature)
    return {**record, "before": {k: raw["test"][k] for k in CALIBRATION_METRICS},
            "after": {k: calibrated["test"][k] for k in CALIBRATION_METRICS}}

