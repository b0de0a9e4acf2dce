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
from ..inference.predictor import Predictor, probabilities_from_logits
from ..io import folder_lock, write_json
from .metrics import CALIBRATION_METRICS, classification_metrics
from .threshold import choose_threshold, operating_point, parse_rule

CALIBRATION_METHODS = ("none", "temperature")
# T is searched on a log scale within these bounds: enough for any trained network, and a bound
# keeps a degenerate validation split (all right, say) from sending T to infinity.
TEMPERATURE_RANGE = (0.05, 20.0)


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


def calibrate_run(run_dir: str | Path, method: str = "temperature", data_dir: str | None = None, device: str = "auto",
                  threshold: str | None = None, positive_class: str | None = None) -> dict:
    """Fit ``method`` (``temperature``, or ``none`` to keep the bundle's) on the run's validation
    split and, with ``threshold`` (a rule of :mod:`.threshold`), choose an operating point for
    ``positive_class`` (binary tasks: the second class) on the validation split too. Both are
    stored in ``best.pt`` and in ``metrics.json`` (``calibrated``: the temperature, the calibrated
    val/test figures and, from the same logits, the ``uncalibrated`` ones; ``operating_point``: the
    threshold and the val/test sensitivity, specificity, PPV and NPV with Wilson intervals).
    Returns what was fitted, with the test figures before and after the temperature."""
    from .run import read_run_config

    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"--method {method}: expected one of {', '.join(CALIBRATION_METHODS)}")
    if method == "none" and threshold is None:
        raise ConfigError("nothing to do: choose --method temperature and/or --threshold RULE")
    if threshold is not None:
        parse_rule(threshold)
    run_dir = Path(run_dir)
    config = read_run_config(run_dir, data_dir)
    with folder_lock(run_dir, "calibrate"):
        return calibrate_held_run(run_dir, config, method, device, threshold, positive_class)


def _positive_index(class_names: list[str], task: str, positive_class: str | None) -> int:
    if positive_class is None:
        if task != "binary-class":
            raise ConfigError(f"--positive-class is needed for an operating point of a {task} task; classes: {', '.join(class_names)}")
        return 1
    if positive_class not in class_names:
        raise ConfigError(f"--positive-class {positive_class}: not a class of this model; classes: {', '.join(class_names)}")
    return class_names.index(positive_class)


def calibrate_held_run(run_dir: Path, config, method: str = "temperature", device: str = "auto", threshold: str | None = None,
                       positive_class: str | None = None) -> dict:
    """:func:`calibrate_run` for a run folder this process already holds (``train --calibrate``)."""
    from ..reporting.figures import reliability_diagram
    from ..training.checkpoint import load_checkpoint, save_checkpoint
    from ..training.trainer import load_run_data

    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise CheckpointError(f"{run_dir}: no metrics.json; calibrate a finished run")
    predictor = Predictor.from_run(run_dir, device=device, backend="torch", calibrated=False)
    data = load_run_data(config)
    positive = _positive_index(data.class_names, data.task, positive_class) if threshold is not None else None
    split_logits = {split: predictor.logits_of_pixels(data.splits[split].images.numpy()) for split in ("val", "test")}
    labels = {split: data.splits[split].labels.numpy() for split in ("val", "test")}
    bundle = load_checkpoint(run_dir / "best.pt")
    metrics = json.loads(metrics_path.read_text())
    done: dict = {}

    def probabilities(t: float) -> dict:
        return {split: probabilities_from_logits(split_logits[split] / t, data.multi_label) for split in split_logits}

    def figures(scores: dict) -> dict:
        return {split: classification_metrics(labels[split], scores[split], data.task, data.class_names) for split in scores}

    if method == "temperature":
        temperature = fit_temperature(split_logits["val"], labels["val"], data.multi_label)
        record = {
            "method": method, "temperature": temperature, "fitted_on": "val",
            "val_nll_before": negative_log_likelihood(split_logits["val"], labels["val"], data.multi_label),
            "val_nll_after": negative_log_likelihood(split_logits["val"], labels["val"], data.multi_label, temperature),
        }
        # both from the same logits of the bundle's model (no test-time augmentation), so that they compare
        raw_scores, scores = probabilities(1.0), probabilities(temperature)
        raw, calibrated = figures(raw_scores), figures(scores)
        metrics["calibrated"] = {**record, **calibrated, "uncalibrated": raw}
        bundle["calibration"] = record
        reliability_diagram(labels["test"], raw_scores["test"], scores["test"], data.task, run_dir / "reliability", temperature)
        done.update(record, before={k: raw["test"][k] for k in CALIBRATION_METRICS}, after={k: calibrated["test"][k] for k in CALIBRATION_METRICS})
    else:
        temperature = float((bundle.get("calibration") or {}).get("temperature", 1.0))
        scores = probabilities(temperature)
    if threshold is not None:
        is_positive = {split: (labels[split][:, positive] == 1) if data.multi_label else labels[split] == positive for split in labels}
        chosen = choose_threshold(is_positive["val"], scores["val"][:, positive], threshold)
        point = {"rule": threshold, "positive_class": data.class_names[positive], "threshold": chosen, "chosen_on": "val",
                 "temperature": temperature, **{split: operating_point(is_positive[split], scores[split][:, positive], chosen) for split in labels}}
        bundle["operating_point"] = point
        metrics["operating_point"] = point
        done["operating_point"] = point
    save_checkpoint(run_dir / "best.pt", bundle)
    write_json(metrics_path, metrics)
    return done
