"""The classification tasks, named as MedMNIST names them, and how each turns logits into
probabilities."""

from __future__ import annotations

from enum import StrEnum

import numpy as np


class Task(StrEnum):
    """MedMNIST's task kinds; the values are MedMNIST's own strings, as its INFO and the bundles hold them."""

    MULTI_CLASS = "multi-class"
    BINARY = "binary-class"
    MULTI_LABEL = "multi-label, binary-class"
    ORDINAL = "ordinal-regression"


def probabilities_from_logits(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    """A sigmoid per label for multi-label tasks, a softmax over the classes otherwise (float64)."""
    logits = logits.astype(np.float64)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
