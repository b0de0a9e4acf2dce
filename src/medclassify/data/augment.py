"""Label-preserving batch augmentation on tensors, on the training device.

Every image of a batch gets its own random flip, rotation, shift and (``strong``) crop scale and
intensity change or (``randaug``) two random intensity operations or (``medmnistc``, after
``exact``'s flips and shifts) one of MedMNIST-C's corruptions, applied to the whole batch at once: the geometric part as one affine
``grid_sample`` with a matrix per image, the intensity part by broadcasting a factor per image.
(torchvision.transforms.v2 draws one set of parameters per call, i.e. per batch, which is why the
per-image parameters are drawn here.) Which geometric transforms are allowed comes from the
dataset's orientation metadata (``catalog.ORIENTATION``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .corruptions import Corruption, random_corruptions

# preset -> (max rotation in degrees for "mirror-x"/"fixed" data, max shift as a share of the side)
LIMITS = {"light": (10.0, 0.08), "strong": (15.0, 0.12), "randaug": (10.0, 0.08), "exact": (0.0, 0.08)}
RANDAUG_OPS_PER_IMAGE = 2


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _coin(n: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < 0.5


class BatchAugment:
    """``augment(images)`` for float images in [0, 1], N x C x H x W, on the generator's device.
    ``medmnistc`` needs the dataset's ``corruptions`` (:func:`.corruptions.corruption_set`)."""

    def __init__(
        self, preset: str, orientation: str, generator: torch.Generator, corruptions: list[Corruption] | None = None
    ):
        if preset == "medmnistc" and not corruptions:
            raise ValueError("the medmnistc preset needs the dataset's corruptions")
        self.preset, self.orientation, self.generator = preset, orientation, generator
        self.corruptions: list[Corruption] = corruptions or []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.preset == "exact":
            return self._exact(images)
        if self.preset == "medmnistc":
            return random_corruptions(self._exact(images), self.corruptions, self.generator)
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
        elif self.preset == "randaug":
            out = self._random_intensity_ops(out)
        return out.clamp_(0.0, 1.0)

    def _exact(self, images: torch.Tensor) -> torch.Tensor:
        """Flips, right-angle turns (as the orientation allows) and shifts by whole pixels, the border
        repeated into the gap: every output pixel is an input pixel, so nothing is blurred, which at
        28 px matters (a bilinear resample softens every training image that the test images are not)."""
        n, device, g = images.shape[0], images.device, self.generator
        out = images
        if self.orientation in ("free", "mirror-x"):
            out = torch.where(_coin(n, g, device).view(n, 1, 1, 1), out.flip(-1), out)
        if self.orientation == "free":  # with the flip above, these give all 8 symmetries of the square
            out = torch.where(_coin(n, g, device).view(n, 1, 1, 1), out.flip(-2), out)
            out = torch.where(_coin(n, g, device).view(n, 1, 1, 1), out.transpose(-1, -2), out)
        height, width = images.shape[-2:]
        pixels = round(LIMITS["exact"][1] * width)
        dy, dx = torch.randint(-pixels, pixels + 1, (2, n, 1), generator=g, device=device)
        rows = (torch.arange(height, device=device) + dy).clamp_(0, height - 1)
        cols = (torch.arange(width, device=device) + dx).clamp_(0, width - 1)
        index = torch.arange(n, device=device).view(n, 1, 1, 1)
        channel = torch.arange(images.shape[1], device=device).view(1, -1, 1, 1)
        return out[index, channel, rows.view(n, 1, height, 1), cols.view(n, 1, 1, width)]

    def _random_intensity_ops(self, images: torch.Tensor) -> torch.Tensor:
        """RandAugment's idea restricted to intensity: each image gets ``RANDAUG_OPS_PER_IMAGE``
        operations drawn from :data:`INTENSITY_OPS`, each with its own magnitude and direction. None
        moves a pixel, so the geometry stays what the orientation allows."""
        n, device, g = images.shape[0], images.device, self.generator
        out = images
        for _ in range(RANDAUG_OPS_PER_IMAGE):
            chosen = torch.randint(0, len(INTENSITY_OPS), (n,), generator=g, device=device)
            magnitude = torch.rand(n, generator=g, device=device).view(n, 1, 1, 1)
            sign = torch.where(_coin(n, g, device), 1.0, -1.0).view(n, 1, 1, 1)
            candidates = torch.stack([op(out, magnitude, sign) for op in INTENSITY_OPS])
            out = candidates[chosen, torch.arange(n, device=device)].clamp(0.0, 1.0)
        return out

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


def _identity(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return x


def _brightness(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return x * (1 + 0.4 * m * s)


def _contrast(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (1 + 0.4 * m * s) + mean


def _gamma(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(1e-6) ** torch.exp(0.4 * m * s)


def _sharpness(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x + (x - blurred) * m * s  # sharper (s = 1) or softer (s = -1)


def _posterize(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    levels = 2.0 ** (8 - torch.round(4 * m)) - 1  # 8 down to 4 bits
    return torch.round(x * levels) / levels


def _solarize(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 1 - 0.5 * m, 1 - x, x)  # inverts the brightest values


def _autocontrast(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-3)


# Each op(images in [0, 1], magnitude in [0, 1], direction +-1) acts on each pixel's value (sharpness:
# with its symmetric neighbourhood), so none can turn a left kidney into a right one.
INTENSITY_OPS = (_identity, _brightness, _contrast, _gamma, _sharpness, _posterize, _solarize, _autocontrast)


def tta_views(images: torch.Tensor, orientation: str) -> list[torch.Tensor]:
    """The flips of a batch that keep labels true: the images themselves, and their mirror images
    where the orientation allows (test-time augmentation averages the predictions over them)."""
    views = [images]
    if orientation in ("free", "mirror-x"):
        views.append(images.flip(-1))
    if orientation == "free":
        views += [images.flip(-2), images.flip(-1).flip(-2)]
    return views
