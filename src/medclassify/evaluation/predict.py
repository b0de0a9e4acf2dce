"""Running a model over a split: class probabilities, labels and the mean loss."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import BatchLoader


def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Sigmoid per label for multi-label tasks, softmax over classes otherwise."""
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)


def loss_function(multi_label: bool) -> nn.Module:
    return nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()


@torch.no_grad()
def predict_split(
    model: nn.Module, loader: BatchLoader, multi_label: bool, amp: bool = False
) -> tuple[np.ndarray, np.ndarray, float]:
    """Returns ``(y_true, y_prob, mean loss)`` over every sample of the loader."""
    model.eval()
    criterion = loss_function(multi_label)
    labels, probs, loss_sum, count = [], [], 0.0, 0
    device_type = loader.device.type
    for images, targets in loader:
        with torch.autocast(device_type, dtype=torch.float16, enabled=amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += criterion(logits, targets).item() * len(targets)
        count += len(targets)
        labels.append(targets.cpu())
        probs.append(probabilities(logits, multi_label).cpu())
    return torch.cat(labels).numpy(), torch.cat(probs).numpy().astype(np.float64), loss_sum / max(count, 1)
