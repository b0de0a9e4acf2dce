"""torchvision's ResNet-18/50, VGG-11-BN and MobileNetV3-Small, adapted to MedMNIST inputs.

* Small inputs (<= 64 px) get a stride-1 stem and no stem max-pool, as in MedMNIST's own ResNet
  benchmark: a 3x3 first convolution when trained from scratch; with ``pretrained`` the ImageNet
  7x7 kernel is kept and only its stride changes, so that the weights still fit.
* One-channel input: the first convolution's RGB weights are summed over the colour axis, so a grey
  image gives the response the pretrained filter gives to the same grey image in RGB.
* ``pretrained`` loads torchvision's ImageNet weights from the PyTorch hub cache
  (``$TORCH_HOME/hub/checkpoints``), downloading them when they are missing and the network allows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ConfigError, first_line
from .registry import register_model

if TYPE_CHECKING:  # torchvision is imported when such a model is built (it takes a second)
    from torchvision.models import VGG, MobileNetV3, ResNet

SMALL_INPUT = 64


def imagenet_state_dict(weights: Any) -> dict:
    """The ImageNet weights of a torchvision ``weights`` enum, from torch's cache or downloaded there;
    an unreachable download is one :class:`ConfigError` line."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / Path(urlparse(weights.url).path).name
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, model_dir=str(folder), map_location="cpu", check_hash=True, weights_only=True
        )
    except Exception as exc:  # offline: URLError/OSError; a broken file: RuntimeError from torch.load
        reason = first_line(getattr(exc, "reason", exc))
        raise ConfigError(
            f"--pretrained: ImageNet weights {path.name} are not usable in {folder} ({reason[:120]}); "
            f"download {weights.url} and put it there"
        ) from None


def torchvision_model(name: str, weights: str, pretrained: bool) -> nn.Module:
    """torchvision's ``name`` without weights, with its ImageNet ``weights`` loaded when ``pretrained``.
    torchvision is imported here, when such a model is built: importing it costs more than a second,
    which the small CNNs (and prediction with them) need not pay."""
    from torchvision import models

    model = models.get_model(name, weights=None)
    if pretrained:
        model.load_state_dict(imagenet_state_dict(models.get_weight(weights)))
    return model


def adapted_conv(conv: nn.Conv2d, in_channels: int, stride: int) -> nn.Conv2d:
    """The same RGB convolution for ``in_channels`` (1 or 3) inputs and ``stride``, keeping its
    weights (summed over the colour axis for one channel)."""
    kernel_size = cast(tuple[int, int], conv.kernel_size)  # a Conv2d's are pairs; torch types them as tuples
    padding = cast(tuple[int, int] | str, conv.padding)
    new = nn.Conv2d(in_channels, conv.out_channels, kernel_size, stride, padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight if in_channels == conv.in_channels else conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None and new.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _resnet(
    name: str, weights: str, in_channels: int, num_classes: int, image_size: int, pretrained: bool
) -> nn.Module:
    model = cast("ResNet", torchvision_model(name, weights, pretrained))
    small = image_size <= SMALL_INPUT
    if small and not pretrained:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    else:
        model.conv1 = adapted_conv(model.conv1, in_channels, stride=1 if small else 2)
    if small:
        model.maxpool = nn.Identity()
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


@register_model(
    "resnet18", "torchvision ResNet-18; stride-1 stem, no max-pool up to 64 px", pretrained=True, cam_layer="layer4"
)
def resnet18(in_channels: int, num_classes: int, image_size: int, pretrained: bool = False) -> nn.Module:
    return _resnet("resnet18", "ResNet18_Weights.IMAGENET1K_V1", in_channels, num_classes, image_size, pretrained)


@register_model(
    "resnet50", "torchvision ResNet-50; stride-1 stem, no max-pool up to 64 px", pretrained=True, cam_layer="layer4"
)
def resnet50(in_channels: int, num_classes: int, image_size: int, pretrained: bool = False) -> nn.Module:
    return _resnet("resnet50", "ResNet50_Weights.IMAGENET1K_V2", in_channels, num_classes, image_size, pretrained)


@register_model(
    "vgg11-bn", "torchvision VGG-11 with BatchNorm; pools that would empty the map dropped, GAP head", pretrained=True
)
def vgg11_bn(in_channels: int, num_classes: int, image_size: int, pretrained: bool = False) -> nn.Module:
    model = cast("VGG", torchvision_model("vgg11_bn", "VGG11_BN_Weights.IMAGENET1K_V1", pretrained))
    model.features[0] = adapted_conv(cast(nn.Conv2d, model.features[0]), in_channels, stride=1)
    side = image_size
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.MaxPool2d):
            if side >= 2:
                side //= 2
            else:  # a 28 px input is 1 x 1 after four pools: the fifth would leave nothing
                model.features[i] = nn.Identity()
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(512, num_classes))
    return model


@register_model(
    "mobilenet-v3-small", "torchvision MobileNetV3-Small for small devices; stride-1 stem up to 64 px", pretrained=True
)
def mobilenet_v3_small(in_channels: int, num_classes: int, image_size: int, pretrained: bool = False) -> nn.Module:
    model = cast(
        "MobileNetV3", torchvision_model("mobilenet_v3_small", "MobileNet_V3_Small_Weights.IMAGENET1K_V1", pretrained)
    )
    stem = cast(nn.Sequential, model.features[0])
    stem[0] = adapted_conv(cast(nn.Conv2d, stem[0]), in_channels, stride=1 if image_size <= SMALL_INPUT else 2)
    head = cast(nn.Linear, model.classifier[-1])
    model.classifier[-1] = nn.Linear(head.in_features, num_classes)
    return model
