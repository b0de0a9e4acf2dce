"""Models are created by name: ``create_model("paper-cnn", in_channels=3, num_classes=8, image_size=28)``.

Each builder takes ``(in_channels, num_classes, image_size)`` (and ``pretrained`` when it offers
ImageNet weights) and returns an ``nn.Module`` whose output is one logit per class. Its final layer
is named ``classifier`` or ``fc``, so that ``--freeze-backbone`` can find the head, and
``cam_layer`` names the last convolutional block, where Grad-CAM looks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NotRequired, Protocol, TypedDict, cast

from torch import nn

from ..errors import ConfigError


class ModelSpec(TypedDict):
    """What rebuilds a model from the registry (an ensemble's also names its members)."""

    name: str
    in_channels: int
    num_classes: int
    image_size: int
    members: NotRequired[list[ModelSpec]]  # an ensemble's
    temperatures: NotRequired[list[float]]
    multi_label: NotRequired[bool]


class Builder(Protocol):
    """Builds a new model for ``in_channels`` inputs of ``image_size`` pixels and ``num_classes`` outputs."""

    def __call__(self, in_channels: int, num_classes: int, image_size: int, /) -> nn.Module: ...


class PretrainedBuilder(Protocol):
    """A :class:`Builder` that can load ImageNet weights (``pretrained=True``)."""

    def __call__(
        self, in_channels: int, num_classes: int, image_size: int, /, pretrained: bool = False
    ) -> nn.Module: ...


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, description, whether ImageNet weights exist, and its Grad-CAM layer."""

    name: str
    builder: Builder
    description: str
    pretrained: bool = False  # whether ImageNet weights exist for it
    cam_layer: str = "features"  # dotted name of the last convolutional block (Grad-CAM's target layer)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, description: str, pretrained: bool = False, cam_layer: str = "features"
) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder(in_channels, num_classes, image_size) -> nn.Module`` under ``name``."""

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, description, pretrained, cam_layer)
        return builder

    return decorator


def available_models() -> dict[str, ModelEntry]:
    """Every registered model.

    Returns:
        Model name (``paper-cnn``, ``resnet18``, ...) to its builder, description and whether it has
        ImageNet weights.
    """
    return dict(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name is a :class:`ConfigError` listing the known ones."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}'; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def create_model(name: str, in_channels: int, num_classes: int, image_size: int, pretrained: bool = False) -> nn.Module:
    """A new model from the registry.

    Args:
        name: a registered name (``medclassify models`` lists them), e.g. ``paper-cnn`` or ``resnet18``.
        in_channels: 1 (grey) or 3 (RGB).
        num_classes: the number of outputs (one logit per class).
        image_size: the input's side in pixels.
        pretrained: load ImageNet weights (only for models that have them).

    Returns:
        The model, its weights initialised (or ImageNet's), in training mode.
    """
    entry = get_model_entry(name)
    if not pretrained:
        return entry.builder(in_channels, num_classes, image_size)
    if not entry.pretrained:
        with_weights = [n for n, e in _REGISTRY.items() if e.pretrained]
        raise ConfigError(
            f"pretrained: model '{name}' has no ImageNet weights; models with weights: {', '.join(with_weights)}",
            parameters=("pretrained",),
        )
    # registered with pretrained=True, so its builder takes the argument
    return cast(PretrainedBuilder, entry.builder)(in_channels, num_classes, image_size, pretrained=True)


def head_module(model: nn.Module) -> nn.Module:
    """The classification head (``classifier`` or ``fc``) that a frozen backbone leaves trainable."""
    for name in ("classifier", "fc"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise ConfigError(f"{type(model).__name__} has no 'classifier' or 'fc' head to train alone")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
