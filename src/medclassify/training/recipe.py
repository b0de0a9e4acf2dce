"""The parts of a training recipe beyond the paper's: losses, class weights, sampling, optimisers,
learning-rate schedules, early stopping and backbone freezing. Each is a small function of the
config so that it can be tested on its own."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from ..errors import ConfigError
from ..models import head_module


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by ``(1 - p_true) ** gamma``; with
    ``gamma = 0`` it is cross-entropy. Class weights normalise as in ``nn.CrossEntropyLoss``."""

    weight: torch.Tensor | None  # a buffer: moved with the loss to the model's device

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        factor = (1 - log_p.exp()).pow(self.gamma)
        w = self.weight[target] if self.weight is not None else torch.ones_like(log_p)
        return (-factor * log_p * w).sum() / w.sum()


class BinaryFocalLoss(nn.Module):
    """Per-label focal loss for multi-label tasks; ``pos_weight`` as in ``BCEWithLogitsLoss``."""

    pos_weight: torch.Tensor | None  # a buffer: moved with the loss to the model's device

    def __init__(self, gamma: float = 2.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight, reduction="none")
        p = torch.sigmoid(logits)
        p_true = torch.where(target > 0.5, p, 1 - p)
        return ((1 - p_true).pow(self.gamma) * bce).mean()


def class_weights(labels: torch.Tensor, num_classes: int, multi_label: bool) -> torch.Tensor:
    """``balanced`` weights: n / (k * n_c) per class (scikit-learn's definition); for multi-label
    tasks the BCE ``pos_weight`` n_negative / n_positive per label."""
    if multi_label:
        positives = labels.sum(0)
        return (len(labels) - positives) / positives.clamp_min(1)
    y = labels.numpy()
    present = np.unique(y)
    weights = np.ones(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.tensor(weights, dtype=torch.float32)


def build_loss(config, train_labels: torch.Tensor, num_classes: int, multi_label: bool) -> nn.Module:
    """The training loss of ``config`` (cross-entropy or focal, class weights, label smoothing; BCE for
    multi-label tasks)."""
    weight = class_weights(train_labels, num_classes, multi_label) if config.class_weights == "balanced" else None
    if multi_label:
        if config.label_smoothing:
            raise ConfigError(
                "label_smoothing applies to single-label tasks; this dataset is multi-label",
                parameters=("label_smoothing",),
            )
        if config.loss == "focal":
            return BinaryFocalLoss(config.focal_gamma, weight)
        return nn.BCEWithLogitsLoss(pos_weight=weight)
    if config.loss == "focal":
        if config.label_smoothing:
            raise ConfigError(
                "loss focal and label_smoothing are alternatives; choose one", parameters=("loss", "label_smoothing")
            )
        return FocalLoss(config.focal_gamma, weight)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


def build_mixer(config, num_classes: int, multi_label: bool):
    """``--mix``: torchvision's MixUp and/or CutMix over whole batches, returning soft targets that
    sum to 1; None for ``none``. Mixing never moves a pixel (CutMix pastes a box at the same place),
    so it is safe for every orientation."""
    if config.mix == "none":
        return None
    if multi_label:
        raise ConfigError("mix mixes single labels into soft targets; this dataset is multi-label", parameters=("mix",))
    from torchvision.transforms import v2

    mixers = {
        "mixup": [v2.MixUp(alpha=config.mix_alpha, num_classes=num_classes)],
        "cutmix": [v2.CutMix(alpha=config.mix_alpha, num_classes=num_classes)],
    }
    chosen = mixers.get(config.mix) or mixers["mixup"] + mixers["cutmix"]
    return chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of the ``updates``-th update after the first: ``min(decay, (1 + n) / (10 + n))``,
    timm's warm-up, so that early in training the average follows the weights instead of the
    random initial ones."""
    return min(decay, (1 + updates) / (10 + updates))


def build_ema(model: nn.Module, decay: float):
    """An exponential moving average of ``model``'s weights and BatchNorm statistics
    (``torch.optim.swa_utils.AveragedModel``): the first update copies the weights, then
    ``ema = d * ema + (1 - d) * weights`` with ``d = ema_decay_at(decay, n)``; integer buffers (batch
    counts) are copied. None when ``decay`` is 0."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def update(
        averaged: tuple[torch.Tensor, ...] | list[torch.Tensor],
        current: tuple[torch.Tensor, ...] | list[torch.Tensor],
        n_averaged: torch.Tensor | int,
    ) -> None:
        if not torch.is_floating_point(averaged[0]):
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1 - ema_decay_at(decay, int(n_averaged)))

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def balanced_sample_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-image weights that make every class equally likely to be drawn (``--sampler balanced``)."""
    counts = torch.bincount(labels)
    return (1.0 / counts.float())[labels].double()


def build_optimizer(config, parameters) -> torch.optim.Optimizer:
    """Adam, AdamW or Nesterov SGD over ``parameters`` with ``config``'s rate and weight decay, as one
    fused kernel with ``config.fused_optimizer`` (else PyTorch's per-tensor loop)."""
    fused = config.fused_optimizer or None  # None: PyTorch picks its per-tensor loop on the CPU
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    return torch.optim.SGD(
        parameters,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.momentum > 0,
        fused=fused,
    )


def build_scheduler(config, optimizer, steps_per_epoch: int):
    """A per-step schedule: linear warm-up over ``warmup_epochs``, then cosine decay to zero, a
    one-cycle policy, or a step decay by ``gamma`` at the ``milestones`` epochs. None for ``none``."""
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=warmup / total if warmup else 0.3
        )
    main: torch.optim.lr_scheduler.LRScheduler
    if config.schedule == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1))
    elif config.schedule == "step":
        milestones = [max(m * steps_per_epoch - warmup, 1) for m in (config.milestones or [])]
        main = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.gamma)
    elif warmup:
        main = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    else:
        return None
    if not warmup:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


class EarlyStopping:
    """Tracks the best value of the monitored metric (which also picks the best checkpoint) and
    says when it has not improved for ``patience`` epochs (0: never stop early)."""

    def __init__(self, patience: int, mode: str = "max"):
        self.patience, self.mode = patience, mode
        self.best: float | None = None
        self.bad_epochs = 0

    def step(self, value: float) -> bool:
        """Record one epoch's value; True when it is the best so far (NaN never is)."""
        improved = not math.isnan(value) and (
            self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        )
        if improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (or unfreeze) every parameter outside the classification head."""
    head = set(map(id, head_module(model).parameters()))
    for parameter in model.parameters():
        if id(parameter) not in head:
            parameter.requires_grad_(trainable)


def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """With a frozen backbone, its BatchNorm layers keep their running statistics too."""
    head = set(map(id, head_module(model).modules()))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) not in head:
            module.eval()
