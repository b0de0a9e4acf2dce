"""MedMNIST ``.npz`` files: find, download (with MD5 check), validate and load into memory."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, first_line
from ..io import file_md5, make_folder
from ..tasks import Task
from .cache import (
    ImageWriter,
    cache_root,
    file_stamp,
    open_cached,
    read_cache,
    refresh_stamp,
    save_labels,
    source_tag,
)
from .catalog import DatasetInfo
from .images import npz_member_header
from .memory import LoadedDataset

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


def verify_md5(path: Path, expected: str | None, verify: bool, actual: str | None = None) -> str:
    """Return the file's MD5 (``actual`` when already known); a mismatch with the official sum is
    an error unless ``verify`` is off."""
    actual = actual or file_md5(path)
    if verify and expected and actual != expected:
        raise DataError(
            f"{path}: MD5 {actual} does not match the official {expected}; delete the file to "
            "download it again, or pass --no-verify to use this local variant"
        )
    return actual


def _check_images(shape: tuple[int, ...], dtype: np.dtype, path: Path, key: str, size: int, channels: int) -> int:
    """Refuse an images array of the wrong dtype, shape or channels; its number of channels (1 for N x H x W)."""
    if dtype != np.uint8:
        raise DataError(f"{path}: '{key}' has dtype {dtype}; expected uint8 images")
    shape = tuple(shape) + ((1,) if len(shape) == 3 else ())
    if len(shape) != 4 or shape[1:3] != (size, size) or shape[3] not in (1, 3):
        raise DataError(
            f"{path}: '{key}' has shape {shape}; expected N x {size} x {size} (grey) or N x {size} x {size} x 3 (RGB)"
        )
    if shape[3] != channels:
        raise DataError(f"{path}: '{key}' has {shape[3]} channel(s); this dataset has {channels}")
    return shape[3]


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


def _check_layout(archive, members: zipfile.ZipFile, path: Path) -> None:
    """Every split's images and labels are there, and every header declares what the archive stores."""
    keys = set(archive.files)
    expected = {f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")}
    if not expected <= keys:
        raise DataError(
            f"{path}: missing keys {', '.join(sorted(expected - keys))}; expected the MedMNIST "
            "layout train_/val_/test_ images and labels"
        )
    for key in sorted(expected):  # declared shapes first: a lying header allocates nothing
        npz_member_header(members, key, path)


def _unreadable(path: Path, exc: BaseException) -> DataError:
    return DataError(f"{path}: not a readable .npz file ({exc}); delete it and download it again")


def write_npz_cache(path: Path, info: DatasetInfo, size: int, channels: int, folder: Path) -> dict:
    """Stream every split of an official-layout file into cache ``folder`` as N x C x H x W arrays
    (grey repeated to ``channels``), a block of images at a time: the images are checked from
    their headers, decompressed member by member and never held whole. The splits' record."""
    splits = {}
    try:
        with np.load(path, allow_pickle=False) as archive, zipfile.ZipFile(path) as members:
            _check_layout(archive, members, path)
            for name in SPLITS:
                key = f"{name}_images"
                with members.open(f"{key}.npy") as member:
                    shape, fortran, dtype = _array_header(member)
                    source_channels = _check_images(shape, dtype, path, key, size, info.n_channels)
                    labels = _to_labels(archive[f"{name}_labels"], path, f"{name}_labels", shape[0], info)
                    if shape[0] == 0:
                        raise DataError(f"{path}: the {name} split is empty")
                    writer = ImageWriter(folder / f"{name}_images.npy", (shape[0], channels, size, size))
                    if fortran:  # not MedMNIST's layout: convert it whole
                        blocks = [np.asarray(archive[key]).reshape(shape[0], size, size, source_channels)]
                    else:
                        blocks = _blocks(member, shape[0], size, source_channels, writer.rows_per_block)
                    for block in blocks:
                        nchw = block.transpose(0, 3, 1, 2)
                        writer.add(np.broadcast_to(nchw, (len(block), channels, size, size)))
                    member.read()  # to the end of the member: its CRC is checked there
                splits[name] = writer.close()
                save_labels(folder, name, labels.numpy())
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, zlib.error) as exc:
        raise _unreadable(path, exc) from None
    return splits


def _array_header(member) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    raise ValueError(f"unsupported .npy format version {version}")


def _blocks(member, n: int, size: int, channels: int, rows: int):
    """The images of an N x H x W (x C) member ``rows`` at a time, as N x H x W x C uint8 arrays."""
    per_image = size * size * channels
    for start in range(0, n, rows):
        count = min(rows, n - start)
        data = member.read(count * per_image)
        if len(data) != count * per_image:
            raise EOFError(f"the images end after {start + len(data) // per_image} of {n}")
        yield np.frombuffer(data, dtype=np.uint8).reshape(count, size, size, channels)


def cache_name(path: Path, channels: int, native_channels: int) -> str:
    """A file's cache folder name: its own name, with the channels when they are converted, and a
    short hash of its resolved path (files of one name in two folders get two caches)."""
    converted = "" if channels == native_channels else f"_{channels}ch"
    return f"{path.stem}{converted}-{source_tag(path)}"


def load_npz_dataset(
    info: DatasetInfo,
    size: int,
    data_dir: Path,
    verify: bool = True,
    download_missing: bool = True,
    channels: int | None = None,
    cache_dir: str | Path | None = None,
    storage: str = "auto",
    verify_cache: bool = False,
) -> LoadedDataset:
    """A MedMNIST file as a :class:`LoadedDataset`, its MD5 checked against the official sum when
    ``verify``, through its split cache (built on first use; ``storage``: auto, memory or mmap);
    ``channels`` repeats grey images to 3. The cache's recorded MD5 stands for the file's while its
    size and modification time are as recorded; ``verify_cache`` computes the MD5 anyway."""
    path = locate(info, size, data_dir, download_missing)
    channels = channels or info.n_channels
    folder = cache_root(cache_dir) / cache_name(path, channels, info.n_channels)
    stamp = file_stamp(path)
    found = read_cache(folder, warn=False)  # open_cached says what is wrong with it
    source = found.record.get("source", {}) if found else {}
    unchanged = source.get("file") == str(path.resolve()) and source.get("stamp") == stamp
    known = source.get("md5") if unchanged and not verify_cache else None
    md5 = verify_md5(path, info.md5(size), verify, known)
    if found and not known and source.get("md5") == md5:  # touched, not changed
        refresh_stamp(found, stamp)

    def write(tmp: Path) -> dict:
        return {
            "name": info.name,
            "kind": "npz",
            "size": size,
            "channels": channels,
            "class_names": list(info.class_names),
            "source": {"file": str(path.resolve()), "md5": md5, "stamp": stamp},
            "splits": write_npz_cache(path, info, size, channels, tmp),
        }

    splits, storage, where, _ = open_cached(folder, lambda record: record["source"]["md5"] == md5, write, storage, path)
    return LoadedDataset(
        name=info.name,
        task=info.task,
        class_names=list(info.class_names),
        channels=channels,
        size=size,
        splits=splits,
        source={
            "kind": "npz",
            "file": str(path.resolve()),
            "md5": md5,
            "official_md5": info.md5(size),
            "md5_verified": bool(verify and info.md5(size)),
            "split_sizes": {name: len(split) for name, split in splits.items()},
            "cache": where,
            "storage": storage,
        },
    )
