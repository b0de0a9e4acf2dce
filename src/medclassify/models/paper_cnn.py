"""The CNN of the paper medclassify started from (:data:`medclassify.citation.PAPER`):
Conv32-Pool-Conv64-Pool-FC128, and its higher-resolution variants."""

from __future__ import annotations

import torch
from torch import nn

from ..citation import PAPER
from .registry import register_model


def paper_cnn_blocks(image_size: int) -> int:
    """Convolution blocks for an input size: two, plus one more for as long as another 2x2
    pooling still leaves a feature map of at least 7 x 7.

    28 px -> 2 blocks (7 x 7), 64 -> 3 (8 x 8, the paper's "extra convolution layer for the higher
    resolution"), 128 -> 4 (8 x 8), 224 -> 5 (7 x 7).
    """
    blocks = 2
    while image_size // 2 ** (blocks + 1) >= 7:
        blocks += 1
    return blocks


class PaperCNN(nn.Module):
    """Conv(C,32,3,p=1)-ReLU-MaxPool(2) -> Conv(32,64,3,p=1)-ReLU-MaxPool(2) [-> Conv(64,128)... one
    block more per :func:`paper_cnn_blocks`, channels doubling] -> Flatten -> Linear(.., 128) -> ReLU
    -> Linear(128, num_classes)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        blocks = paper_cnn_blocks(image_size)
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(blocks):
            width = 32 * 2**i
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        side = image_size // 2**blocks
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("paper-cnn", f"The CNN of {PAPER}: Conv32-Pool-Conv64-Pool-FC128 (+1 conv block per size step)")
def paper_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return PaperCNN(in_channels, num_classes, image_size)
