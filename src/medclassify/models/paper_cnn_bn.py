"""paper-cnn (the CNN of :data:`medclassify.citation.PAPER`) with BatchNorm and Dropout: the Keras
variant of the paper's notebooks."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

WIDTHS = (32, 64, 128, 256)


class PaperCNNBN(nn.Module):
    """Four blocks Conv(3x3)-BatchNorm-ReLU-MaxPool(2) with 32, 64, 128 and 256 filters (a block
    pools only while its feature map is at least 2 px wide), global average pooling, Dropout(0.5),
    Linear(256, 128)-ReLU, Linear(128, num_classes)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, image_size
        for width in WIDTHS:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(channels, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("paper-cnn-bn", "paper-cnn with BatchNorm and Dropout: 32-64-128-256 filters, BN, GAP, Dropout 0.5")
def paper_cnn_bn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return PaperCNNBN(in_channels, num_classes, image_size)
