"""Datasets as uint8 tensors: every split is held once, in memory or memory-mapped from the split
cache, and batches are built by indexing it. No per-image PIL decoding or Python transform runs
during training."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TypedDict

import torch
from torch.utils.data import WeightedRandomSampler

from ..tasks import Task

SUMS_CHUNK_BYTES = 16 << 20  # pixels summed at a time: bounds the int32 copy whatever the image size


@dataclass(frozen=True)
class PixelSums:
    """Exact per-channel sums of a split's pixel values (0-255) and of their squares, and how many
    values each channel has: what the normalisation statistics are made of, kept by the split cache
    so that no run has to read every image again."""

    total: tuple[int, ...]
    squares: tuple[int, ...]
    count: int

    def as_dict(self) -> dict:
        return {"total": list(self.total), "squares": list(self.squares), "count": self.count}


def pixel_sums(images: torch.Tensor, chunk: int | None = None) -> PixelSums:
    """:class:`PixelSums` of uint8 N x C x H x W images, ``chunk`` images (default: about 16 MB) at
    a time (integers: exact, whatever the chunking)."""
    channels = images.shape[1]
    chunk = chunk or max(1, SUMS_CHUNK_BYTES // max(1, math.prod(images.shape[1:])))
    total = torch.zeros(channels, dtype=torch.int64)
    squares = torch.zeros(channels, dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        block = torch.as_tensor(images[start : start + chunk]).to(torch.int32)
        total += block.sum(dim=(0, 2, 3), dtype=torch.int64)
        squares += block.square_().sum(dim=(0, 2, 3), dtype=torch.int64)
    count = images.shape[0] * images.shape[2] * images.shape[3]
    return PixelSums(tuple(total.tolist()), tuple(squares.tolist()), count)


@dataclass
class Split:
    """One split: uint8 images (in memory or memory-mapped) and their labels; ``sums`` when known
    (the split cache records them)."""

    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64 N (single-label tasks) or float32 N x L (multi-label)
    sums: PixelSums | None = None
    mapped: bool = False  # the images are memory-mapped from the split cache, not held in memory

    def __len__(self) -> int:
        return self.images.shape[0]

    def pixel_sums(self) -> PixelSums:
        """The recorded sums, or one pass over the images."""
        return self.sums if self.sums is not None else pixel_sums(self.images)


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


class NormalizationRecord(TypedDict):
    """A normalisation as config.json and the bundles record it."""

    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class Normalization:
    """``(x / 255 - mean) / std`` per channel, i.e. torchvision's ToTensor followed by Normalize."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def as_dict(self) -> NormalizationRecord:
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


def compute_normalization(images: torch.Tensor | Split, mode: str, chunk: int | None = None) -> Normalization:
    """``dataset``: per-channel mean/std of the training images (from a :class:`Split`'s recorded
    sums when it has them); ``half``: MedMNIST's example (0.5, 0.5); ``none``: plain [0, 1] scaling."""
    channels = images.images.shape[1] if isinstance(images, Split) else images.shape[1]
    if mode == "half":
        return Normalization((0.5,) * channels, (0.5,) * channels)
    if mode == "none":
        return Normalization((0.0,) * channels, (1.0,) * channels)
    sums = images.pixel_sums() if isinstance(images, Split) else pixel_sums(images, chunk)
    total = torch.tensor(sums.total, dtype=torch.float64)
    squares = torch.tensor(sums.squares, dtype=torch.float64)
    mean = total / (255.0 * sums.count)
    std = (squares / (255.0**2 * sums.count) - mean**2).clamp_min(1e-12).sqrt()
    return Normalization(tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std))


def prefetched(batches: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``batches`` with up to ``depth`` items made ahead in a background thread, so that
    reading the next batch (from a memory-mapped file, into pinned memory) overlaps the training
    step. Errors of the producer are raised here; leaving the loop early stops the thread."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((done, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            items.put((done, exc))

    thread = threading.Thread(target=produce, name="medclassify-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with suppress(queue.Empty):
                items.get(timeout=0.1)
        thread.join()


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
        # batches gathered on the host from a memory-mapped file, or for an accelerator, are made
        # ahead in a thread (in pinned memory for CUDA) while the model trains on the current one
        on_host = self.images.device.type == "cpu"
        self.prefetch = on_host and (split.mapped or device.type != "cpu")
        self.pin_memory = on_host and device.type == "cuda"

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
                list(
                    WeightedRandomSampler(
                        self.sample_weights,  # type: ignore[arg-type]  # torch.as_tensor takes it; the stub says Sequence
                        n,
                        replacement=True,
                        generator=self.generator,
                    )
                )
            )
        elif self.shuffle:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        batches = self._gathered(order)
        for images, labels in prefetched(batches) if self.prefetch else batches:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.augment is None:
                yield self.normalization.apply(images), labels
            else:
                yield self.normalization.apply_unit(self.augment(images.float().div_(255.0))), labels

    def _gathered(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The uint8 images and labels of each batch of ``order``, where the split is held."""
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size].to(self.images.device)
            images, labels = self.images[index], self.labels[index]
            if self.pin_memory:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield images, labels
