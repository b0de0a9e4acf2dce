"""Models are created by name: ``create_model("paper-cnn", in_channels=3, num_classes=8, image_size=28)``.

Each builder takes ``(in_channels, num_classes, image_size)`` and returns an ``nn.Module`` whose
output is one logit per class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import ConfigError

Builder = Callable[[int, int, int], nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Builder
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str) -> Callable[[Builder], Builder]:
    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, description)
        return builder

    return decorator


def available_models() -> dict[str, ModelEntry]:
    return dict(_REGISTRY)


def create_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name].builder(in_channels, num_classes, image_size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
