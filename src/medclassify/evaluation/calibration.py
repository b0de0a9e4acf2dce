"""Temperature scaling (Guo et al., 2017): one number T, fitted on the validation split, by which the
model's logits are divided before the softmax (or sigmoid). It leaves every class decision as it was
and makes the probabilities match how often the model is right.

``runs.calibrate_run`` fits T for a run folder, stores it in the model bundle (``best.pt``), where
``predict``, ``serve``, ``explain`` and the exported ONNX/TorchScript graph apply it, and records the
raw and the calibrated figures side by side in ``metrics.json``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

CALIBRATION_METHODS = ("none", "temperature")
# T is searched on a log scale within these bounds: enough for any trained network, and a bound
# keeps a degenerate validation split (all right, say) from sending T to infinity.
TEMPERATURE_RANGE = (0.05, 20.0)


def negative_log_likelihood(
    logits: np.ndarray, y_true: np.ndarray, multi_label: bool, temperature: float = 1.0
) -> float:
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
    best = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, y_true, multi_label, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(best.x))
