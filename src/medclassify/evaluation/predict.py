"""Running a model over a split: class probabilities, labels and the mean loss."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import BatchLoader, Normalization, Split, tta_views
from ..runtime.distributed import gather, merge_shards, shard


def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Sigmoid per label for multi-label tasks, softmax over classes otherwise."""
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)


def loss_function(multi_label: bool) -> nn.Module:
    """The evaluation loss: cross-entropy, or binary cross-entropy per label for multi-label tasks."""
    return nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()


@torch.inference_mode()  # no autograd bookkeeping at all: the outputs only become arrays
def predict_split(
    model: nn.Module, loader: BatchLoader, multi_label: bool, amp: bool = False, tta_orientation: str | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Returns ``(y_true, y_prob, mean loss)`` over every sample of the loader. With
    ``tta_orientation`` the probabilities are averaged over the label-safe flips of each image
    (the loss stays that of the plain images)."""
    model.eval()
    criterion = loss_function(multi_label)
    labels, probs, loss_sum, count = [], [], 0.0, 0
    device_type = loader.device.type
    for images, targets in loader:
        views = tta_views(images, tta_orientation) if tta_orientation else [images]
        with torch.autocast(device_type, dtype=torch.float16, enabled=amp):
            logits = [model(view).float() for view in views]
        loss_sum += criterion(logits[0], targets).item() * len(targets)
        count += len(targets)
        labels.append(targets.cpu())
        probs.append(torch.stack([probabilities(view_logits, multi_label) for view_logits in logits]).mean(0).cpu())
    return torch.cat(labels).numpy(), torch.cat(probs).numpy().astype(np.float64), loss_sum / max(count, 1)


def predict_split_sharded(
    model: nn.Module,
    split: Split,
    batch_size: int,
    normalization: Normalization,
    device: torch.device,
    multi_label: bool,
    amp: bool = False,
    tta_orientation: str | None = None,
    context=None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`predict_split` over a whole split. With several processes (``context``, a
    ``runtime.distributed.Distributed``) each predicts every world_size-th sample and the parts are
    gathered in the split's order on every process: the same numbers as one process."""
    if context is None or not context.enabled:
        return predict_split(
            model, BatchLoader(split, batch_size, normalization, device), multi_label, amp, tta_orientation
        )
    indices = shard(context, len(split))
    part = Split(split.images[indices], split.labels[indices])
    y_true, y_prob, loss = predict_split(
        model, BatchLoader(part, batch_size, normalization, device), multi_label, amp, tta_orientation
    )
    return merge_shards(gather(context, (indices, y_true, y_prob, loss * len(indices))))
