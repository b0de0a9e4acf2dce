"""MedMNIST ``.npz`` files: find, download (with MD5 check), validate and load into memory."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, first_line
from ..io import file_md5, make_folder
from ..tasks import Task
from .catalog import DatasetInfo
from .images import npz_member_header
from .memory import LoadedDataset, Split

SPLITS = ("train", "val", "test")


def missing_file_message(info: DatasetInfo, size: int, data_dir: Path, reason: str = "") -> str:
    """The one-line error for a MedMNIST file that is neither on disk nor downloadable."""
    because = f" ({reason})" if reason else ""
    return (
        f"{info.filename(size)} is not in {data_dir} and could not be downloaded{because}; "
        f"download {info.url(size)} by hand and put it in {data_dir}"
    )


def download(info: DatasetInfo, size: int, data_dir: Path) -> Path:
    """Download into a temporary folder and move into place, so a broken download leaves nothing."""
    from torchvision.datasets.utils import download_url  # imported lazily: it pulls in requests

    target = data_dir / info.filename(size)
    created = [folder for folder in (data_dir, *data_dir.parents) if not folder.exists()]
    make_folder(data_dir)
    try:
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
            try:
                download_url(info.url(size), tmp, info.filename(size), md5=info.md5(size))
            except Exception as exc:  # network errors come as URLError, OSError or RuntimeError
                reason = first_line(getattr(exc, "reason", exc))
                raise DataError(missing_file_message(info, size, data_dir, reason)) from None
            shutil.move(str(Path(tmp) / info.filename(size)), target)
    except BaseException:
        for folder in created:  # a failed download leaves no empty folders behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return target


def locate(info: DatasetInfo, size: int, data_dir: Path, download_missing: bool = True) -> Path:
    """The path of the MedMNIST ``.npz`` file in ``data_dir``, downloaded there first if missing and allowed."""
    path = data_dir / info.filename(size)
    if path.is_file():
        return path
    if not download_missing:
        raise DataError(missing_file_message(info, size, data_dir, "downloads are switched off"))
    return download(info, size, data_dir)


def verify_md5(path: Path, expected: str | None, verify: bool) -> str:
    """Return the file's MD5; a mismatch with the official sum is an error unless ``verify`` is off."""
    actual = file_md5(path)
    if verify and expected and actual != expected:
        raise DataError(
            f"{path}: MD5 {actual} does not match the official {expected}; delete the file to "
            "download it again, or pass --no-verify to use this local variant"
        )
    return actual


def _to_nchw(images: np.ndarray, path: Path, key: str, size: int, channels: int) -> torch.Tensor:
    if images.dtype != np.uint8:
        raise DataError(f"{path}: '{key}' has dtype {images.dtype}; expected uint8 images")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:3] != (size, size) or images.shape[3] not in (1, 3):
        raise DataError(
            f"{path}: '{key}' has shape {images.shape}; expected N x {size} x {size} (grey) "
            f"or N x {size} x {size} x 3 (RGB)"
        )
    if images.shape[3] != channels:
        raise DataError(f"{path}: '{key}' has {images.shape[3]} channel(s); this dataset has {channels}")
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _to_labels(labels: np.ndarray, path: Path, key: str, n: int, info: DatasetInfo) -> torch.Tensor:
    n_classes = len(info.class_names)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: '{key}' has dtype {labels.dtype}; expected integer labels")
    width = n_classes if info.task == Task.MULTI_LABEL else 1
    if labels.ndim == 1 and width == 1:
        labels = labels[:, None]
    if labels.shape != (n, width):
        raise DataError(f"{path}: '{key}' has shape {labels.shape}; expected ({n}, {width})")
    high = 1 if info.task == Task.MULTI_LABEL else n_classes - 1
    if labels.size and (labels.min() < 0 or labels.max() > high):
        raise DataError(
            f"{path}: '{key}' holds labels from {labels.min()} to {labels.max()}; "
            f"expected 0..{high} ({n_classes} classes)"
        )
    if info.task == Task.MULTI_LABEL:
        return torch.from_numpy(labels.astype(np.float32))
    return torch.from_numpy(labels[:, 0].astype(np.int64))


def read_npz(path: Path, info: DatasetInfo, size: int) -> dict[str, Split]:
    """Load and check every split of an official-layout file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            expected = {f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")}
            if not expected <= keys:
                raise DataError(
                    f"{path}: missing keys {', '.join(sorted(expected - keys))}; expected the MedMNIST "
                    "layout train_/val_/test_ images and labels"
                )
            with zipfile.ZipFile(path) as members:  # declared shapes first: a lying header allocates nothing
                for key in sorted(expected):
                    npz_member_header(members, key, path)
            splits = {}
            for name in SPLITS:
                images = _to_nchw(archive[f"{name}_images"], path, f"{name}_images", size, info.n_channels)
                labels = _to_labels(archive[f"{name}_labels"], path, f"{name}_labels", len(images), info)
                if len(images) == 0:
                    raise DataError(f"{path}: the {name} split is empty")
                splits[name] = Split(images, labels)
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError, MemoryError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc}); delete it and download it again") from None
    return splits


def load_npz_dataset(
    info: DatasetInfo, size: int, data_dir: Path, verify: bool = True, download_missing: bool = True
) -> LoadedDataset:
    """A MedMNIST file as a :class:`LoadedDataset`, its MD5 checked against the official sum when ``verify``."""
    path = locate(info, size, data_dir, download_missing)
    md5 = verify_md5(path, info.md5(size), verify)
    splits = read_npz(path, info, size)
    return LoadedDataset(
        name=info.name,
        task=info.task,
        class_names=list(info.class_names),
        channels=info.n_channels,
        size=size,
        splits=splits,
        source={
            "kind": "npz",
            "file": str(path.resolve()),
            "md5": md5,
            "official_md5": info.md5(size),
            "md5_verified": bool(verify and info.md5(size)),
            "split_sizes": {name: len(split) for name, split in splits.items()},
        },
    )
