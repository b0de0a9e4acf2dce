"""The split cache: every split of a dataset written once as uncompressed arrays in the
N x C x H x W layout training uses, so that later runs open them in milliseconds, memory-mapped,
and every process on a machine shares one page-cache copy of the pixels.

A cache is a folder ``ROOT/NAME/`` (ROOT: :func:`cache_root`, the user's cache folder by default)
holding ``SPLIT_images.npy`` and ``SPLIT_labels.npy`` for train, val and test, and
``cache.json``: the format, the source (an ``.npz`` file, or an image folder's files) with its MD5
and the size and modification time it had, the channels, class names, and each split's shape and
exact pixel sums (the normalisation statistics). It is built in a temporary folder beside it and
renamed into place while a lock is held, so that an interrupted build leaves no half cache and
two processes never build one at once. It can be deleted at any time; the next run builds it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from ..errors import DataError, OutputError, first_line
from ..io import cannot_write, make_folder, write_json

if TYPE_CHECKING:
    from .memory import Split

CACHE_FOLDER = "split-cache"  # inside the user's cache folder
RECORD_NAME = "cache.json"
FORMAT_VERSION = 2  # 2: the record carries its own digest, and names the source by a hash of its path
SPLITS = ("train", "val", "test")
Storage = Literal["auto", "memory", "mmap"]
STORAGES: tuple[Storage, ...] = get_args(Storage)
# ``auto`` copies a cache into memory while the copies of all the machine's processes together
# stay within this size, and memory-maps it otherwise (one page-cache copy they share): at 28 px a
# copy trains faster than a mapping (no page faults; bench/train_throughput.py)
MEMORY_MAX_BYTES = 1 << 30
CHUNK_BYTES = 16 << 20  # how much of a source is converted at a time while a cache is built


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where the split caches live: ``--cache-dir``, else ``$MEDCLASSIFY_CACHE``, else the user's cache
    folder (``$XDG_CACHE_HOME/medclassify/split-cache``, by default ``~/.cache/medclassify/split-cache``),
    as Hugging Face datasets and torch hub keep theirs: never inside a data folder unless asked."""
    chosen = cache_dir or os.environ.get("MEDCLASSIFY_CACHE")
    if chosen:
        return Path(chosen).expanduser()
    user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(user_cache) / "medclassify" / CACHE_FOLDER


def source_tag(source: Path) -> str:
    """A short hash of a source's resolved path: two data folders (or files) of one name get two caches."""
    return hashlib.sha256(str(Path(source).resolve()).encode()).hexdigest()[:8]


def file_stamp(path: Path) -> dict:
    """A file's size and modification time: when both are as recorded, its recorded MD5 still holds."""
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass
class SplitCache:
    """A complete cache folder and its record."""

    folder: Path
    record: dict

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.iterdir() if f.is_file())

    def storage(self, requested: str) -> str:
        """``memory`` or ``mmap``: as requested, or for ``auto`` by the size of the copies that this
        machine's processes would hold (torchrun's ``LOCAL_WORLD_SIZE``: each process its own)."""
        if requested != "auto":
            return requested
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return "memory" if self.nbytes * processes <= MEMORY_MAX_BYTES else "mmap"

    def open(self, storage: str = "auto") -> tuple[dict[str, Split], str]:
        """Every split, read into memory or memory-mapped (copy-on-write: nothing is ever written
        back), and the storage used."""
        import torch

        from .memory import PixelSums, Split

        chosen = self.storage(storage)
        splits = {}
        for name in SPLITS:
            images = np.load(self.folder / f"{name}_images.npy", mmap_mode="c" if chosen == "mmap" else None)
            labels = np.load(self.folder / f"{name}_labels.npy")
            sums = self.record["splits"][name]["sums"]
            splits[name] = Split(
                torch.from_numpy(images),
                torch.from_numpy(labels),
                PixelSums(tuple(sums["total"]), tuple(sums["squares"]), sums["count"]),
                mapped=chosen == "mmap",
            )
        return splits, chosen


def storage_line(source: dict) -> str:
    """How a loaded dataset holds its splits, in words (for the run's log)."""
    where = source.get("cache")
    if source.get("storage") == "mmap":
        return f"memory-mapped from {where}"
    return f"in memory, read from {where}" if where else "in memory, no split cache"


def read_cache(folder: Path, warn: bool = True) -> SplitCache | None:
    """The cache in ``folder`` when it is complete, of this format and agrees with its record (the
    record's digest, each file's size, each array's header, the labels' range, the pixel sums'
    shape); None otherwise, with a warning when a cache was there but did not hold up."""
    if not (folder / RECORD_NAME).is_file():
        return None
    try:
        record = json.loads((folder / RECORD_NAME).read_text())
        problem = _record_problem(folder, record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        problem = f"unreadable ({first_line(exc)})"
    if problem is None:
        return SplitCache(folder, record)
    if warn and not problem.startswith("format"):
        warnings.warn(f"split cache {folder}: {problem}; it is built again", stacklevel=3)
    return None


def _digest(record: dict) -> str:
    content = {key: value for key, value in record.items() if key != "digest"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _write_record(folder: Path, record: dict) -> None:
    record["digest"] = _digest(record)
    write_json(folder / RECORD_NAME, record)


def _record_problem(folder: Path, record: dict) -> str | None:
    """What is wrong with a cache folder against its record, or None."""
    if not isinstance(record, dict) or record.get("format") != FORMAT_VERSION:
        return "format of another version"
    if record.get("digest") != _digest(record):
        return f"{RECORD_NAME} was changed after it was written"
    for name, size in record["files"].items():
        if (folder / name).stat().st_size != size:
            return f"{name} has another size than recorded"
    classes = len(record["class_names"])
    for split in SPLITS:
        entry = record["splits"][split]
        n, channels, height, width = entry["shape"]
        images = _npy_header(folder / f"{split}_images.npy")
        if images != ((n, channels, height, width), np.dtype(np.uint8)):
            return f"{split}_images.npy holds {images[0]} {images[1]} instead of the recorded ({n}, {channels}, {height}, {width}) uint8"
        sums = entry["sums"]
        if (
            sums["count"] != n * height * width
            or n < 1
            or len(sums["total"]) != channels
            or len(sums["squares"]) != channels
        ):
            return f"the {split} split's pixel sums do not fit its shape"
        labels = np.load(folder / f"{split}_labels.npy", allow_pickle=False)
        if len(labels) != n:
            return f"{split}_labels.npy holds {len(labels)} labels for {n} images"
        if labels.ndim == 1:
            if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= classes:
                return f"{split}_labels.npy holds labels that are not classes 0 to {classes - 1}"
        elif labels.shape[1:] != (classes,) or not np.isin(labels, (0, 1)).all():
            return f"{split}_labels.npy holds labels that are not 0/1 for each of the {classes} classes"
    return None


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """An ``.npy`` file's shape and dtype from its header alone."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    return tuple(shape), dtype


def list_caches(root: Path) -> list[SplitCache]:
    """The complete caches under a cache root."""
    if not root.is_dir():
        return []
    return [cache for folder in sorted(root.iterdir()) if (cache := read_cache(folder)) is not None]


@contextmanager
def _build_lock(folder: Path):
    from filelock import FileLock, Timeout

    lock = FileLock(folder.parent / f".{folder.name}.lock")
    try:
        lock.acquire(timeout=24 * 3600)
    except Timeout:  # pragma: no cover - a day-long build by another process
        raise OutputError(f"{folder}: another process has been building this cache for a day") from None
    try:
        yield
    finally:
        lock.release()


def cached(folder: Path, is_current: Callable[[dict], bool], write: Callable[[Path], dict]) -> SplitCache:
    """The cache in ``folder`` if its record ``is_current``, else built anew by ``write``.

    ``write(tmp)`` writes the split arrays into the empty folder ``tmp`` and returns the record (the
    files' sizes and the format are added here). A cache that cannot be written (a read-only
    folder, a full disk) is one :class:`OutputError` line naming the folder.
    """
    found = read_cache(folder)
    if found is not None and is_current(found.record):
        return found
    try:
        make_folder(folder.parent)
        with _build_lock(folder):
            found = read_cache(folder, warn=False)  # another process may have built it while this one waited
            if found is not None and is_current(found.record):
                return found
            return _build(folder, write)
    except OSError as exc:
        raise cannot_write(folder, exc) from None


def _build(folder: Path, write: Callable[[Path], dict]) -> SplitCache:
    for stale in folder.parent.glob(f".{folder.name}.building-*"):  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.parent / f".{folder.name}.building-{os.getpid()}"
    tmp.mkdir()
    try:
        record = {"format": FORMAT_VERSION, **write(tmp)}
        record["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        record["files"] = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
        _write_record(tmp, record)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SplitCache(folder, record)


def refresh_stamp(cache: SplitCache, stamp: dict) -> None:
    """Record a source's new size and time after its MD5 was found unchanged (best effort: a
    read-only cache is checked by MD5 again next time)."""
    cache.record["source"]["stamp"] = stamp
    with suppress(OutputError):
        _write_record(cache.folder, cache.record)


class ImageWriter:
    """Writes one split's uint8 N x C x H x W ``.npy`` file into a cache folder block by block,
    summing its pixels on the way, so that a split is never held in memory whole. Plain sequential
    writes: a full disk is an ``OSError`` here, not a fault in a mapped page."""

    def __init__(self, path: Path, shape: tuple[int, int, int, int], sums: bool = True):
        self.path = path
        self.shape = tuple(int(n) for n in shape)
        self.sums = sums
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed by close(), which the caller always reaches or abandons with the folder
        np.lib.format.write_array_header_1_0(
            self.file,
            {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": self.shape},
        )
        self.written = 0
        self.total = np.zeros(self.shape[1], dtype=np.int64)
        self.squares = np.zeros(self.shape[1], dtype=np.int64)

    @property
    def rows_per_block(self) -> int:
        return max(1, CHUNK_BYTES // max(1, int(np.prod(self.shape[1:]))))

    def add(self, block: np.ndarray) -> None:
        """The next images, N x C x H x W uint8."""
        block = np.ascontiguousarray(block, dtype=np.uint8)
        self.file.write(block.data)
        if self.sums:
            wide = block.astype(np.int32)
            self.total += wide.sum(axis=(0, 2, 3), dtype=np.int64)
            self.squares += np.square(wide).sum(axis=(0, 2, 3), dtype=np.int64)
        self.written += len(block)

    def close(self) -> dict:
        """Close the file; the split's record (shape and pixel sums)."""
        self.file.close()
        if self.written != self.shape[0]:
            raise DataError(f"{self.path}: {self.written} of {self.shape[0]} images were written")
        n, _, height, width = self.shape
        return {
            "n": n,
            "shape": list(self.shape),
            "sums": {"total": self.total.tolist(), "squares": self.squares.tolist(), "count": n * height * width},
        }


def save_labels(folder: Path, split: str, labels: np.ndarray) -> None:
    """A split's labels beside its images."""
    np.save(folder / f"{split}_labels.npy", labels)


def open_cached(
    folder: Path, is_current: Callable[[dict], bool], write: Callable[[Path], dict], storage: str, source: Path
) -> tuple[dict[str, Split], str, str | None, dict]:
    """The splits of the cache in ``folder`` (built by ``write`` unless ``is_current``), the storage
    used, the cache folder and its record. Where no cache can be written, a one-line warning says
    so and the splits are built in a temporary folder and read into memory (the folder is gone after)."""
    try:
        cache = cached(folder, is_current, write)
        splits, used = cache.open(storage)
        return splits, used, str(cache.folder), cache.record
    except OutputError as exc:
        warnings.warn(
            f"{exc}; reading {source} into memory without a split cache (--cache-dir DIR puts the cache elsewhere)",
            stacklevel=3,
        )
    with tempfile.TemporaryDirectory(prefix="medclassify-cache-") as tmp:
        cache = cached(Path(tmp) / folder.name, is_current, write)
        splits, used = cache.open("memory")
    return splits, used, None, cache.record
