"""Label-preserving batch augmentation on tensors, on the training device.

Every image of a batch gets its own random flip, rotation, shift and (``strong``) crop scale and
intensity change, applied to the whole batch at once: the geometric part as one affine
``grid_sample`` with a matrix per image, the intensity part by broadcasting a factor per image.
(torchvision.transforms.v2 draws one set of parameters per call, i.e. per batch, which is why the
per-image parameters are drawn here.) Which geometric transforms are allowed comes from the
dataset's orientation metadata (``catalog.ORIENTATION``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# preset -> (max rotation in degrees for "mirror-x"/"fixed" data, max shift as a share of the side)
LIMITS = {"light": (10.0, 0.08), "strong": (15.0, 0.12)}


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _coin(n: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < 0.5


class BatchAugment:
    """``augment(images)`` for float images in [0, 1], N x C x H x W, on the generator's device."""

    def __init__(self, preset: str, orientation: str, generator: torch.Generator):
        self.preset, self.orientation, self.generator = preset, orientation, generator

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, device, g = images.shape[0], images.device, self.generator
        max_rotation, max_shift = LIMITS[self.preset]
        angle = _uniform(n, -max_rotation, max_rotation, g, device) * math.pi / 180
        scale_x = torch.ones(n, device=device)
        scale_y = torch.ones(n, device=device)
        if self.orientation == "free":  # any of the 8 flips/right-angle rotations, plus a small turn
            angle = angle + torch.randint(0, 4, (n,), generator=g, device=device) * (math.pi / 2)
            scale_y = torch.where(_coin(n, g, device), -scale_y, scale_y)
        if self.orientation in ("free", "mirror-x"):
            scale_x = torch.where(_coin(n, g, device), -scale_x, scale_x)
        zoom = _uniform(n, 0.8, 1.0, g, device) if self.preset == "strong" else torch.ones(n, device=device)
        shift = _uniform(2 * n, -max_shift, max_shift, g, device).view(n, 2) * 2  # grid units span 2
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        theta = torch.stack(
            [
                torch.stack([cos * scale_x, -sin * scale_y, shift[:, 0]], dim=1),
                torch.stack([sin * scale_x, cos * scale_y, shift[:, 1]], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.preset == "strong":
            out = self._intensity(out)
        return out.clamp_(0.0, 1.0)

    def _intensity(self, images: torch.Tensor) -> torch.Tensor:
        n, device, g = images.shape[0], images.device, self.generator
        brightness = _uniform(n, 0.8, 1.2, g, device).view(n, 1, 1, 1)
        contrast = _uniform(n, 0.8, 1.2, g, device).view(n, 1, 1, 1)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        out = (images * brightness - mean) * contrast + mean
        if images.shape[1] == 3:  # colour: saturation around the grey value
            saturation = _uniform(n, 0.8, 1.2, g, device).view(n, 1, 1, 1)
            grey = (out * torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)).sum(1, keepdim=True)
            out = grey + (out - grey) * saturation
        return out


def tta_views(images: torch.Tensor, orientation: str) -> list[torch.Tensor]:
    """The flips of a batch that keep labels true: the images themselves, and their mirror images
    where the orientation allows (test-time augmentation averages the predictions over them)."""
    views = [images]
    if orientation in ("free", "mirror-x"):
        views.append(images.flip(-1))
    if orientation == "free":
        views += [images.flip(-2), images.flip(-1).flip(-2)]
    return views
