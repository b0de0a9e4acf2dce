"""In-memory datasets: every split is decoded once into a uint8 tensor, and batches are built by
indexing it. No per-image PIL decoding or Python transform runs during training."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils.data import WeightedRandomSampler

from ..tasks import Task


@dataclass
class Split:
    """One split in memory: uint8 images and their labels."""

    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64 N (single-label tasks) or float32 N x L (multi-label)

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class LoadedDataset:
    """A dataset ready for training: its splits, classes, task, orientation and where it came from (``source``)."""

    name: str
    task: Task
    class_names: list[str]
    channels: int
    size: int
    splits: dict[str, Split]
    source: dict = field(default_factory=dict)  # provenance recorded in config.json
    orientation: str = "fixed"  # which geometric transforms keep labels true (catalog.ORIENTATION)

    @property
    def multi_label(self) -> bool:
        return self.task == Task.MULTI_LABEL

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Normalization:
    """``(x / 255 - mean) / std`` per channel, i.e. torchvision's ToTensor followed by Normalize."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def as_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x H x W -> normalised float32, in one fused multiply-add."""
        channels = images.shape[1]
        std = torch.tensor(self.std, device=images.device).view(1, channels, 1, 1)
        mean = torch.tensor(self.mean, device=images.device).view(1, channels, 1, 1)
        scale = 1.0 / (255.0 * std)
        return torch.addcmul(-mean / std, images.float(), scale)

    def apply_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Float images already scaled to [0, 1] (e.g. after augmentation) -> normalised."""
        channels = images.shape[1]
        std = torch.tensor(self.std, device=images.device).view(1, channels, 1, 1)
        mean = torch.tensor(self.mean, device=images.device).view(1, channels, 1, 1)
        return (images - mean) / std


def compute_normalization(images: torch.Tensor, mode: str, chunk: int = 4096) -> Normalization:
    """``dataset``: per-channel mean/std of the training images; ``half``: MedMNIST's example
    (0.5, 0.5); ``none``: plain [0, 1] scaling."""
    channels = images.shape[1]
    if mode == "half":
        return Normalization((0.5,) * channels, (0.5,) * channels)
    if mode == "none":
        return Normalization((0.0,) * channels, (1.0,) * channels)
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):  # chunks keep 224 px datasets within memory
        block = images[start : start + chunk].to(torch.float64) / 255.0
        total += block.sum(dim=(0, 2, 3))
        total_sq += (block**2).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return Normalization(tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std))


class BatchLoader:
    """Yields normalised ``(images, labels)`` batches of a :class:`Split` on ``device``.

    Shuffling uses its own seeded ``torch.Generator`` whose state is saved in checkpoints, so a
    resumed run draws the same batches as an uninterrupted one. ``sample_weights`` draws each epoch's
    images with replacement in proportion to the weights (``WeightedRandomSampler``), and
    ``augment`` transforms the [0, 1] images of every batch before normalisation. ``sampler`` (e.g.
    a ``DistributedSampler``: this process's share, reshuffled per epoch) gives the order instead,
    and ``epoch_size`` is how many weighted draws make an epoch (default: the split's size).
    """

    # Splits up to this size are copied to an accelerator once instead of batch by batch.
    DEVICE_RESIDENT_BYTES = 2 << 30

    def __init__(
        self,
        split: Split,
        batch_size: int,
        normalization: Normalization,
        device: torch.device,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        sample_weights: torch.Tensor | None = None,
        augment=None,
        sampler=None,
        epoch_size: int | None = None,
    ):
        self.batch_size = batch_size
        self.sampler = sampler
        self.epoch_size = epoch_size
        self.sample_weights = sample_weights
        self.augment = augment
        self.normalization = normalization
        self.device = device
        self.shuffle = shuffle
        self.generator = generator
        resident = device.type == "cpu" or split.images.nbytes <= self.DEVICE_RESIDENT_BYTES
        self.images = split.images.to(device) if resident else split.images
        self.labels = split.labels.to(device) if resident else split.labels

    def __len__(self) -> int:
        return math.ceil(self._epoch_length() / self.batch_size)

    def _epoch_length(self) -> int:
        if self.sampler is not None:
            return len(self.sampler)
        return self.epoch_size or self.images.shape[0]

    def __iter__(self):
        n = self._epoch_length()
        if self.sampler is not None:
            order = torch.tensor(list(self.sampler), dtype=torch.int64)
        elif self.sample_weights is not None:
            order = torch.tensor(
                list(WeightedRandomSampler(self.sample_weights, n, replacement=True, generator=self.generator))
            )
        elif self.shuffle:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size].to(self.images.device)
            images = self.images[index].to(self.device, non_blocking=True)
            labels = self.labels[index].to(self.device, non_blocking=True)
            if self.augment is None:
                yield self.normalization.apply(images), labels
            else:
                yield self.normalization.apply_unit(self.augment(images.float().div_(255.0))), labels
