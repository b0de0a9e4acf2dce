"""Realistic image corruptions at five severities: MedMNIST-C's families and per-dataset severities
(F. Di Salvo, S. Doerrich, C. Ledig, MedMNIST-C: Comprehensive benchmark and improved classifier
robustness by simulating realistic image corruptions, arXiv:2406.17536, 2024; parameters from its
``medmnistc`` package, Apache-2.0), as batched torch operations.

Why not call ``medmnistc`` itself: it pins medmnist 3.0.1 and scikit-image 0.23.2, needs the
ImageMagick library at import, works one PIL image at a time at 224 px, and its motion blur fails
under NumPy 2 (``np.fromstring``). Its parameters are in pixels of a 224 px image, so the spatial
ones (blur radii and widths) are scaled to the image's side: a severity blurs the same share of the
image at every size. Intensity parameters (noise, brightness, contrast, gamma, saturation, JPEG
quality, pixelation factor) do not depend on the size and are used as they are. Left out: its
task-specific overlays (stain deposits, bubbles, black corners, characters), which need the
package's ink images and fonts.

Every operation takes float images in [0, 1] (N x C x H x W) and one row of parameters per image,
so the same code corrupts a test split at one severity and augments a training batch with a
parameter drawn per image (:func:`random_corruptions`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..defaults import CORRUPTION_SETS
from ..errors import ConfigError

REFERENCE_SIZE = 224  # the side MedMNIST-C's spatial parameters are measured at
FAMILIES = ("digital", "noise", "blur", "color", "task-specific")  # MedMNIST-C's folds
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def _pil_each(images: torch.Tensor, params: torch.Tensor, change: Callable[[Image.Image, list], Image.Image]):
    """``change`` applied to each image as an 8-bit PIL image (codecs and resampling as MedMNIST-C)."""
    n, c, h, w = images.shape
    pixels = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for array, row in zip(pixels, params.tolist(), strict=True):
        image = Image.fromarray(array[..., 0] if c == 1 else array)
        out.append(np.asarray(change(image, row)).reshape(h, w, c))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(images.device, images.dtype) / 255


def _pixelate(images, params, scale, generator):
    def change(image, row):
        w, h = image.size
        small = image.resize((max(1, int(w * row[0])), max(1, int(h * row[0]))), Image.Resampling.BOX)
        return small.resize((w, h), Image.Resampling.BOX)

    return _pil_each(images, params, change)


def _jpeg(images, params, scale, generator):
    def change(image, row):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(row[0]))
        return Image.open(buffer).convert(image.mode)

    return _pil_each(images, params, change)


def _column(params: torch.Tensor, i: int, images: torch.Tensor) -> torch.Tensor:
    return params[:, i].to(images.device, images.dtype).view(-1, 1, 1, 1)


def _gaussian_noise(images, params, scale, generator):
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return images + noise * _column(params, 0, images)


def _speckle_noise(images, params, scale, generator):
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return images + images * noise * _column(params, 0, images)


def _impulse_noise(images, params, scale, generator):
    """Salt and pepper on each value, as scikit-image's ``random_noise(mode="s&p")``."""
    flipped = torch.rand(images.shape, generator=generator, device=images.device) < _column(params, 0, images)
    salt = torch.rand(images.shape, generator=generator, device=images.device) < 0.5
    return torch.where(flipped, salt.to(images.dtype), images)


def _shot_noise(images, params, scale, generator):
    photons = _column(params, 0, images)
    return torch.poisson(images * photons, generator=generator) / photons


def _brightness(images, params, scale, generator):
    return images * _column(params, 0, images)  # PIL's ImageEnhance.Brightness: a blend with black


def _luminance(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(_LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _contrast(images, params, scale, generator):
    """PIL's ImageEnhance.Contrast: a blend with the image's mean grey level (rounded to 8 bits)."""
    mean = (_luminance(images).mean(dim=(1, 2, 3), keepdim=True) * 255 + 0.5).floor() / 255
    return mean + (images - mean) * _column(params, 0, images)


def _gamma(images, params, scale, generator):
    return images.clamp_min(0) ** _column(params, 0, images)  # torchvision's adjust_gamma, gain 1


def _saturate(images, params, scale, generator):
    """Add to the HSV saturation, keeping hue and value (MedMNIST-C's ``Saturate``). In HSV each
    channel is ``v * (1 - s * k)`` with ``k`` fixed by the hue, so the channels move towards or away
    from ``v`` in proportion; a grey pixel has hue 0 (red), as in scikit-image."""
    if images.shape[1] != 3:
        return images
    value = images.amax(1, keepdim=True)
    spread = value - images.amin(1, keepdim=True)
    saturation = torch.where(value > 0, spread / value.clamp_min(1e-12), torch.zeros_like(value))
    new_saturation = (saturation + _column(params, 0, images)).clamp(0, 1)
    grey = spread <= 1e-12
    red_hue = torch.tensor([0.0, 1.0, 1.0], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    k = torch.where(grey, red_hue.expand_as(images), (value - images) / spread.clamp_min(1e-12))
    return value * (1 - new_saturation * k)


def _filter_each(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each image correlated with its own odd-sized kernel (N x K x K), borders mirrored."""
    n, c, h, w = images.shape
    pad = kernels.shape[-1] // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    padded = F.pad(images.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode=mode)
    weight = kernels.to(images.dtype).repeat_interleave(c, 0).unsqueeze(1)
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


def _offsets(radius: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    axis = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return axis.view(1, -1, 1), axis.view(1, 1, -1)  # dy, dx


def _normalised(kernels: torch.Tensor) -> torch.Tensor:
    return kernels / kernels.sum(dim=(1, 2), keepdim=True)


def _gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    sigma = sigma.float().clamp_min(1e-3).view(-1, 1, 1)
    dy, dx = _offsets(max(1, math.ceil(3 * float(sigma.max()))), sigma.device)
    return _normalised(torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)))


def _gaussian_blur(images, params, scale, generator):
    """torchvision's ``gaussian_blur`` with MedMNIST-C's kernel size k at 224 px: sigma
    0.3 ((k - 1) / 2 - 1) + 0.8 there, scaled to the image."""
    sigma = (0.3 * ((params[:, 0] - 1) * 0.5 - 1) + 0.8) * scale
    return _filter_each(images, _gaussian_kernels(sigma.to(images.device)))


def _defocus_blur(images, params, scale, generator):
    """A disk of the given radius (edge anti-aliased), then a Gaussian of the alias sigma, as
    MedMNIST-C's ``DefocusBlur`` (both scaled to the image)."""
    radius = (params[:, 0] * scale).float().to(images.device).view(-1, 1, 1)
    dy, dx = _offsets(math.ceil(float(radius.max())) + 1, images.device)
    disk = (radius + 0.5 - torch.sqrt(dx**2 + dy**2)).clamp(0, 1)
    blurred = _filter_each(images, _normalised(disk))
    return _filter_each(blurred, _gaussian_kernels((params[:, 1] * scale).to(images.device)))


def _motion_blur(images, params, scale, generator):
    """ImageMagick's motion blur as MedMNIST-C calls it: each pixel averages the pixels up to twice
    the radius along one direction (a random angle in [-45, 45] degrees per image), weighted by a
    Gaussian of the distance with the given sigma."""
    n, device = images.shape[0], images.device
    length = (2 * params[:, 0] * scale).float().to(device).view(-1, 1)
    sigma = (params[:, 1] * scale).float().to(device).clamp_min(1e-3).view(-1, 1)
    angle = (torch.rand(n, generator=generator, device=device) * 90 - 45) * (math.pi / 180)
    steps = torch.linspace(0, 1, 64, device=device).view(1, -1) * length  # N x 64 distances along the line
    weight = torch.exp(-(steps**2) / (2 * sigma**2))
    x, y = steps * torch.cos(angle).view(-1, 1), steps * torch.sin(angle).view(-1, 1)
    radius = math.ceil(float(length.max())) + 1
    size = 2 * radius + 1
    kernels = torch.zeros(n, size * size, device=device)
    x0, y0 = x.floor(), y.floor()
    for ox in (0, 1):  # bilinear splat of each sample onto the pixel grid
        for oy in (0, 1):
            share = (1 - (x - x0 - ox).abs()) * (1 - (y - y0 - oy).abs())
            index = (y0 + oy + radius).long() * size + (x0 + ox + radius).long()
            kernels.scatter_add_(1, index, weight * share)
    return _filter_each(images, _normalised(kernels.view(n, size, size)))


def _zoom_blur(images, params, scale, generator):
    """The mean of the image and its centre zoomed by factors from 1 to ``stop`` in ``step``s
    (MedMNIST-C's ``ZoomBlur``); zoom factors are relative, so they need no scaling."""
    out = images.clone()
    for i, (stop, step) in enumerate(params.tolist()):
        image, side = images[i : i + 1], images.shape[-1]
        factors = np.arange(1.0, stop, step)
        total = image.clone()
        for factor in factors:
            crop = math.ceil(side / factor)
            top = (side - crop) // 2
            zoomed = F.interpolate(
                image[..., top : top + crop, top : top + crop],
                size=round(crop * factor),
                mode="bilinear",
                align_corners=False,
            )
            trim = (zoomed.shape[-1] - side) // 2
            total += zoomed[..., trim : trim + side, trim : trim + side]
        out[i : i + 1] = total / (len(factors) + 1)
    return out


@dataclass(frozen=True)
class Kind:
    """What a corruption does: its operation and the MedMNIST-C fold it belongs to."""

    family: str
    apply: Callable  # (images, params N x P, scale, generator) -> images


KINDS = {
    "pixelate": Kind("digital", _pixelate),
    "jpeg_compression": Kind("digital", _jpeg),
    "gaussian_noise": Kind("noise", _gaussian_noise),
    "speckle_noise": Kind("noise", _speckle_noise),
    "impulse_noise": Kind("noise", _impulse_noise),
    "shot_noise": Kind("noise", _shot_noise),
    "defocus_blur": Kind("blur", _defocus_blur),
    "motion_blur": Kind("blur", _motion_blur),
    "zoom_blur": Kind("blur", _zoom_blur),
    "gaussian_blur": Kind("blur", _gaussian_blur),
    "brightness_up": Kind("color", _brightness),
    "brightness_down": Kind("color", _brightness),
    "contrast_up": Kind("color", _contrast),
    "contrast_down": Kind("color", _contrast),
    "saturate": Kind("color", _saturate),
    "gamma_corr_up": Kind("task-specific", _gamma),
    "gamma_corr_down": Kind("task-specific", _gamma),
}

# a corruption's parameters at severities 1..5: a number each, or a tuple for two-parameter ones
Levels = Sequence[float] | Sequence[tuple[float, float]]
_CT: dict[str, Levels] = {
    "pixelate": [0.7, 0.6, 0.5, 0.40, 0.35],
    "jpeg_compression": [50, 30, 15, 10, 7],
    "gaussian_noise": [0.04, 0.08, 0.12, 0.16, 0.20],
    "speckle_noise": [0.05, 0.10, 0.20, 0.30, 0.40],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.08],
    "shot_noise": [200, 100, 50, 25, 15],
    "gaussian_blur": [11, 13, 15, 17, 21],
    "brightness_up": [1.2, 1.3, 1.4, 1.5, 1.6],
    "brightness_down": [0.8, 0.75, 0.7, 0.65, 0.60],
    "contrast_up": [1.3, 1.4, 1.6, 1.7, 1.8],
    "contrast_down": [0.8, 0.7, 0.6, 0.55, 0.5],
    "gamma_corr_up": [1.3, 1.4, 1.6, 1.8, 2.0],
    "gamma_corr_down": [0.9, 0.8, 0.7, 0.6, 0.4],
}
_CHEST: dict[str, Levels] = {
    "pixelate": [0.30, 0.25, 0.20, 0.15, 0.10],
    "jpeg_compression": [50, 30, 15, 10, 7],
    "gaussian_noise": [0.04, 0.08, 0.12, 0.18, 0.26],
    "speckle_noise": [0.05, 0.15, 0.2, 0.35, 0.45],
    "impulse_noise": [0.01, 0.03, 0.06, 0.09, 0.17],
    "shot_noise": [60, 25, 18, 10, 5],
    "gaussian_blur": [3, 5, 7, 9, 11],
    "brightness_up": [1.1, 1.2, 1.3, 1.4, 1.5],
    "brightness_down": [0.9, 0.8, 0.7, 0.6, 0.5],
    "contrast_up": [1.1, 1.2, 1.3, 1.4, 1.6],
    "contrast_down": [0.9, 0.8, 0.7, 0.6, 0.4],
    "gamma_corr_up": [1.1, 1.2, 1.3, 1.4, 1.6],
    "gamma_corr_down": [0.9, 0.8, 0.7, 0.6, 0.4],
}
# dataset -> corruption -> parameters at severities 1..5 (a number, or a tuple for two-parameter ones)
MEDMNISTC: dict[str, dict[str, Levels]] = {
    "pathmnist": {
        "pixelate": [0.8, 0.6, 0.40, 0.30, 0.25],
        "jpeg_compression": [50, 30, 15, 10, 7],
        "defocus_blur": [(3, 0.1), (4, 0.1), (5, 0.2), (6, 0.2), (7, 0.3)],
        "motion_blur": [(5, 5), (10, 5), (15, 5), (15, 8), (15, 12)],
        "brightness_up": [1.1, 1.15, 1.2, 1.22, 1.25],
        "brightness_down": [0.85, 0.80, 0.75, 0.72, 0.70],
        "contrast_up": [1.1, 1.2, 1.3, 1.4, 1.6],
        "contrast_down": [0.8, 0.7, 0.6, 0.55, 0.5],
        "saturate": [0.05, 0.10, 0.15, 0.20, 0.25],
    },
    "bloodmnist": {
        "pixelate": [0.6, 0.5, 0.40, 0.30, 0.25],
        "jpeg_compression": [50, 30, 15, 10, 7],
        "defocus_blur": [(2, 0.01), (3, 0.1), (4, 0.1), (5, 0.1), (6, 0.1)],
        "motion_blur": [(3, 3), (5, 5), (10, 5), (10, 7), (10, 9)],
        "brightness_up": [1.1, 1.2, 1.3, 1.35, 1.4],
        "brightness_down": [0.9, 0.8, 0.7, 0.6, 0.5],
        "contrast_up": [1.1, 1.15, 1.2, 1.25, 1.3],
        "contrast_down": [0.9, 0.8, 0.7, 0.6, 0.5],
        "saturate": [0.05, 0.10, 0.15, 0.17, 0.20],
    },
    "dermamnist": {
        "pixelate": [0.7, 0.5, 0.40, 0.30, 0.25],
        "jpeg_compression": [30, 20, 15, 10, 7],
        "gaussian_noise": [0.04, 0.08, 0.12, 0.18, 0.26],
        "speckle_noise": [0.05, 0.15, 0.2, 0.35, 0.45],
        "impulse_noise": [0.01, 0.03, 0.06, 0.09, 0.17],
        "shot_noise": [60, 25, 18, 10, 5],
        "defocus_blur": [(4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5)],
        "motion_blur": [(10, 5), (15, 5), (15, 8), (15, 12), (20, 15)],
        "zoom_blur": [(1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)],
        "brightness_up": [1.1, 1.2, 1.3, 1.4, 1.5],
        "brightness_down": [0.9, 0.8, 0.7, 0.6, 0.5],
        "contrast_up": [1.1, 1.2, 1.3, 1.4, 1.6],
        "contrast_down": [0.8, 0.7, 0.6, 0.5, 0.4],
    },
    "retinamnist": {
        "pixelate": [0.8, 0.60, 0.50, 0.40, 0.35],
        "jpeg_compression": [30, 25, 20, 10, 5],
        "gaussian_noise": [0.04, 0.08, 0.12, 0.16, 0.20],
        "speckle_noise": [0.10, 0.15, 0.20, 0.25, 0.30],
        "defocus_blur": [(4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5)],
        "motion_blur": [(8, 5), (15, 5), (15, 8), (15, 12), (20, 15)],
        "brightness_down": [0.9, 0.8, 0.7, 0.6, 0.5],
        "contrast_down": [0.9, 0.8, 0.7, 0.6, 0.4],
    },
    "tissuemnist": {
        "pixelate": [0.40, 0.30, 0.20, 0.15, 0.10],
        "jpeg_compression": [25, 20, 15, 10, 7],
        "impulse_noise": [0.01, 0.015, 0.02, 0.025, 0.03],
        "gaussian_blur": [13, 15, 17, 21, 25],
        "brightness_up": [1.3, 1.4, 1.5, 1.6, 1.7],
        "brightness_down": [0.8, 0.7, 0.6, 0.5, 0.4],
        "contrast_up": [1.1, 1.2, 1.3, 1.4, 1.6],
        "contrast_down": [0.9, 0.8, 0.7, 0.6, 0.4],
    },
    "octmnist": {
        "pixelate": [0.30, 0.25, 0.20, 0.15, 0.10],
        "jpeg_compression": [30, 15, 10, 7, 5],
        "speckle_noise": [0.15, 0.30, 0.40, 0.50, 0.60],
        "defocus_blur": [(0.5, 0.6), (1, 0.5), (1.5, 0.1), (2.0, 0.5), (2.5, 0.1)],
        "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
        "contrast_down": [0.6, 0.4, 0.3, 0.2, 0.15],
    },
    "breastmnist": {
        "pixelate": [0.30, 0.25, 0.20, 0.15, 0.10],
        "jpeg_compression": [50, 30, 15, 10, 7],
        "speckle_noise": [0.10, 0.15, 0.20, 0.25, 0.30],
        "motion_blur": [(5, 5), (9, 7), (9, 10), (13, 10), (17, 12)],
        "brightness_up": [1.4, 1.5, 1.6, 1.8, 2.0],
        "brightness_down": [0.55, 0.5, 0.45, 0.4, 0.3],
        "contrast_down": [0.9, 0.8, 0.7, 0.6, 0.4],
    },
    "chestmnist": _CHEST,
    "pneumoniamnist": {
        **_CHEST,
        "pixelate": [0.8, 0.7, 0.6, 0.5, 0.40],
        "gaussian_noise": [0.04, 0.05, 0.06, 0.07, 0.08],
        "speckle_noise": [0.05, 0.07, 0.10, 0.15, 0.20],
        "impulse_noise": [0.005, 0.01, 0.013, 0.017, 0.02],
        "shot_noise": [300, 200, 150, 100, 80],
    },
    "organamnist": _CT,
    "organcmnist": _CT,
    "organsmnist": _CT,
}
# Data without a MedMNIST-C table (image folders, synthcells): the most complete table that suits any
# modality (abdominal CT's: digital, four noises, blur, brightness, contrast, gamma), and for colour
# images the saturation of BloodMNIST's.
GENERIC = {**_CT, "saturate": MEDMNISTC["bloodmnist"]["saturate"]}


@dataclass(frozen=True)
class Corruption:
    """One corruption and its parameters at severities 1..5."""

    name: str
    levels: tuple[tuple[float, ...], ...]

    @property
    def family(self) -> str:
        return KINDS[self.name].family

    def params(self, severity: int, n: int) -> torch.Tensor:
        """The parameters of ``severity`` (1..5) for ``n`` images."""
        return torch.tensor(self.levels[severity - 1], dtype=torch.float64).repeat(n, 1)

    def random_params(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Parameters drawn uniformly between severity 1's and severity 5's, per image and parameter,
        as MedMNIST-C's augmentation draws them."""
        low, high = (torch.tensor(self.levels[i], dtype=torch.float64) for i in (0, -1))
        draw = torch.rand(n, len(low), generator=generator, device=generator.device).to("cpu", torch.float64)
        return low + (high - low) * draw

    def __call__(self, images: torch.Tensor, params: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        scale = images.shape[-1] / REFERENCE_SIZE
        return KINDS[self.name].apply(images, params, scale, generator).clamp(0, 1)


def corruption_set(dataset: str, channels: int, which: str = "auto") -> tuple[str, list[Corruption]]:
    """The corruptions for a dataset: ``medmnistc`` (its MedMNIST-C table), ``generic`` (:data:`GENERIC`)
    or ``auto`` (the table where MedMNIST-C has one). Returns the set's name and its corruptions;
    colour-only ones are left out for grey images."""
    if which not in CORRUPTION_SETS:
        raise ConfigError(
            f"corruptions {which}: expected one of {', '.join(CORRUPTION_SETS)}", parameters=("corruptions",)
        )
    if which == "medmnistc" and dataset not in MEDMNISTC:
        raise ConfigError(
            f"corruptions medmnistc: MedMNIST-C has no corruptions for '{dataset}'; it has "
            f"{', '.join(MEDMNISTC)} (use generic)",
            parameters=("corruptions",),
        )
    chosen = "medmnistc" if which == "medmnistc" or (which == "auto" and dataset in MEDMNISTC) else "generic"
    table = MEDMNISTC[dataset] if chosen == "medmnistc" else GENERIC
    corruptions = [
        Corruption(name, tuple(tuple(v) if isinstance(v, tuple) else (float(v),) for v in levels))
        for name, levels in table.items()
        if channels == 3 or name != "saturate"
    ]
    return chosen, corruptions


def corrupt(images: torch.Tensor, corruption: Corruption, severity: int, generator: torch.Generator) -> torch.Tensor:
    """8-bit images (N x C x H x W) under ``corruption`` at ``severity`` (0: the images themselves),
    as 8-bit images again (rounded, as a saved image would be)."""
    if severity == 0:
        return images
    out = corruption(images.float() / 255, corruption.params(severity, len(images)), generator)
    return (out * 255).round_().to(torch.uint8)


def random_corruptions(images: torch.Tensor, corruptions: list[Corruption], generator: torch.Generator):
    """MedMNIST-C's augmentation over a batch of float images in [0, 1]: each image gets one of the
    corruptions, or none, chosen uniformly, at an intensity drawn between severities 1 and 5."""
    n = len(images)
    chosen = torch.randint(0, len(corruptions) + 1, (n,), generator=generator, device=generator.device).cpu()
    out = images.clone()
    for i, corruption in enumerate(corruptions):
        index = (chosen == i).nonzero().flatten().to(images.device)
        if len(index):
            out[index] = corruption(images[index], corruption.random_params(len(index), generator), generator)
    return out
