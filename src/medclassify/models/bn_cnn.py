"""A small modern baseline: VGG-style stages with BatchNorm, global average pooling and Dropout."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def _conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class BatchNormCNN(nn.Module):
    """Three stages of two Conv-BN-ReLU (32, 64, 128 filters) with max-pooling between them, global
    average pooling and Dropout(0.3) before the classifier. The pooling makes it size-agnostic."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += _conv_bn(channels, width) + _conv_bn(width, width)
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("bn-cnn", "Small BatchNorm baseline: 3 stages of 2 Conv-BN-ReLU (32-64-128), GAP, Dropout")
def bn_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return BatchNormCNN(in_channels, num_classes)


@register_model("bn-cnn-wide", "bn-cnn at twice the width: 3 stages of 2 Conv-BN-ReLU (64-128-256), GAP, Dropout")
def bn_cnn_wide(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return BatchNormCNN(in_channels, num_classes, widths=(64, 128, 256))
