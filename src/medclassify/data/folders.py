"""Image folders in the ``train/ [val/] [test/]`` + one-sub-folder-per-class layout (e.g. the Kaggle
chest X-ray set: ``chest_xray/train/NORMAL``, ``chest_xray/train/PNEUMONIA``).

Every image is decoded once with Pillow (in parallel processes), converted to grey or RGB and
resized to ``size`` x ``size`` (the aspect ratio is not kept, as MedMNIST's own resizing), into the
folder's split cache; later runs open the cache while no file of the folder changed.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from ..errors import DataError
from ..tasks import Task
from .cache import ImageWriter, cache_root, open_cached, save_labels, source_tag
from .images import decode_training_image, to_channels
from .memory import LoadedDataset

# Decoding starts worker processes from this many files on (fewer decode faster in this process).
PROCESS_MIN_FILES = 512
CHANNEL_NAMES = {None: "auto", 1: "grey", 3: "rgb"}  # a folder cache's name says which channels it holds


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(split_dir: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    files = []
    for label, name in enumerate(class_names):
        class_dir = split_dir / name
        if class_dir.is_dir():
            files += [(p, label) for p in sorted(class_dir.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    return files


def load_folder_dataset(
    root: Path,
    size: int,
    channels: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    *,
    cache_dir: str | Path | None = None,
    storage: str = "auto",
    rebuild: bool = False,
) -> LoadedDataset:
    """An image folder (``train/CLASS/*``, optional ``val/`` and ``test/``) resized to ``size``; missing
    splits are held out of train/ by class, with ``split_seed``. ``source['files']`` says which file
    went where. The decoded splits are cached (:func:`.cache.cache_root`, or ``cache_dir``) and
    rebuilt when a file is added, removed or changed (its size or modification time), or with ``rebuild``."""
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(
            f"{root}: no 'train' folder; expected {root}/train/<class>/ images (and optionally val/, test/)"
        )
    class_names = [p.name for p in _class_dirs(train_dir)]
    if len(class_names) < 2:
        raise DataError(
            f"{train_dir}: found {len(class_names)} class folder(s); expected one sub-folder per class, at least 2"
        )
    for split in ("val", "test"):
        if (root / split).is_dir():
            extra = sorted({p.name for p in _class_dirs(root / split)} - set(class_names))
            if extra:
                raise DataError(f"{root / split}: class folder(s) {', '.join(extra)} are not in {train_dir}")

    present = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    files = {s: _scan(root / s, class_names) for s in present}
    carved = "val" not in files or "test" not in files
    settings: dict[str, Any] = {"size": size, "channels": channels, "class_names": class_names}
    if carved:
        settings.update(val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed)
    signature = _signature(root, files, settings)
    # the folder's own name and a hash of its path: two folders never share (and rebuild) one cache
    name = f"{root.resolve().name or 'folder'}-{source_tag(root)}_{size}px_{CHANNEL_NAMES[channels]}" + (
        f"_split{split_seed}-{val_fraction:g}-{test_fraction:g}" if carved else ""
    )

    def write(tmp: Path) -> dict:
        record = _write_cache(root, files, class_names, size, channels, val_fraction, test_fraction, split_seed, tmp)
        record["source"]["signature"] = signature
        return record

    splits, storage, where, record = open_cached(
        cache_root(cache_dir) / name,
        lambda found: found["source"]["signature"] == signature and not rebuild,
        write,
        storage,
        root,
    )
    source = record["source"]
    unreadable = source["skipped_files"]
    if unreadable:
        shown = ", ".join(unreadable[:20])
        more = f" and {len(unreadable) - 20} more" if len(unreadable) > 20 else ""
        warnings.warn(f"skipped {len(unreadable)} file(s) that are not readable images: {shown}{more}", stacklevel=2)
    return LoadedDataset(
        name=root.name or "folder",
        task=Task.BINARY if len(class_names) == 2 else Task.MULTI_CLASS,
        class_names=class_names,
        channels=record["channels"],
        size=size,
        splits=splits,
        source={
            "kind": "folder",
            "root": str(root.resolve()),
            "md5": source["md5"],  # over every used file's relative path and content MD5
            "split_sizes": {s: len(split) for s, split in splits.items()},
            "skipped_files": unreadable,
            **source["split_note"],
            "files": source["files"],
            "cache": where,
            "storage": storage,
        },
    )


def _signature(root: Path, files: dict, settings: dict) -> str:
    """What a folder cache was built from: the settings and every file's path, class, size and
    modification time (a changed file changes one of them, without reading any file)."""
    digest = hashlib.md5(json.dumps(settings, sort_keys=True).encode())
    for split, items in files.items():
        for path, label in items:
            stat = path.stat()
            digest.update(f"{split}\t{path.relative_to(root)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decoded(paths: list[Path], size: int):
    """Each file decoded (:func:`decode_training_image`), in order, in worker processes when there are many."""
    workers = min(os.cpu_count() or 1, 8)
    if len(paths) < PROCESS_MIN_FILES or workers < 2:
        yield from map(decode_training_image, paths, repeat(size))
        return
    # spawned workers import only the image module (no torch), and nothing of this process's state
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(decode_training_image, paths, repeat(size), chunksize=32)


def _write_cache(
    root: Path,
    files: dict,
    class_names: list[str],
    size: int,
    channels: int | None,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    folder: Path,
) -> dict:
    """Decode every file once into ``folder`` (RGB, in file order), choose the channels and the
    splits, then write each split's array from the decoded images, a block at a time."""
    everything = [item for items in files.values() for item in items]
    position = {path: i for i, (path, _) in enumerate(everything)}
    decoded_file = folder / "decoded.npy"
    rgb = ImageWriter(decoded_file, (len(everything), size, size, 3), sums=False)
    grey, md5s = [], {}  # of the readable files
    progress = tqdm(total=len(everything), desc=f"decoding {root.name}", unit="image", disable=None, leave=False)
    with progress:
        for (path, _), result in zip(everything, _decoded([p for p, _ in everything], size)):
            if result is None:
                rgb.add(np.zeros((1, size, size, 3), dtype=np.uint8))
            else:
                rgb.add(result[0][None])
                grey.append(result[1])
                md5s[path] = result[2]
            progress.update()
    rgb.close()
    unreadable = [path for path, _ in everything if path not in md5s]
    files = {s: [(p, label) for p, label in items if p in md5s] for s, items in files.items()}
    if channels is None:  # what most images are
        channels = 1 if sum(grey) * 2 >= len(grey) else 3

    split_note: dict[str, float | int] = {}
    if "val" not in files or "test" not in files:
        files, split_note = _stratified_split(files, val_fraction, test_fraction, split_seed)

    decoded = np.load(decoded_file, mmap_mode="r")
    splits = {}
    for split in ("train", "val", "test"):
        items = files[split]
        if not items:
            raise DataError(f"{root}: the {split} split has no readable images")
        counts = Counter(label for _, label in items)
        empty = [class_names[k] for k in range(len(class_names)) if counts[k] == 0]
        if split == "train" and empty:
            raise DataError(f"{root / 'train'}: class folder(s) {', '.join(empty)} hold no readable images")
        writer = ImageWriter(folder / f"{split}_images.npy", (len(items), channels, size, size))
        index = np.array([position[p] for p, _ in items])
        for start in range(0, len(index), writer.rows_per_block):
            writer.add(to_channels(decoded[index[start : start + writer.rows_per_block]], channels))
        splits[split] = writer.close()
        save_labels(folder, split, np.array([label for _, label in items], dtype=np.int64))
    del decoded
    decoded_file.unlink()

    listing = sorted((str(p.relative_to(root)), md5s[p]) for items in files.values() for p, _ in items)
    digest = hashlib.md5("\n".join(f"{rel}\t{md5}" for rel, md5 in listing).encode()).hexdigest()
    return {
        "name": root.name or "folder",
        "kind": "folder",
        "size": size,
        "channels": channels,
        "class_names": class_names,
        "source": {
            "root": str(root.resolve()),
            "md5": digest,
            "skipped_files": [str(p.relative_to(root)) for p in unreadable],
            "split_note": split_note,
            "files": {s: [str(p.relative_to(root)) for p, _ in items] for s, items in files.items()},
        },
        "splits": splits,
    }


def _stratified_split(files: dict, val_fraction: float, test_fraction: float, seed: int) -> tuple[dict, dict]:
    """Carve the missing val/test splits out of train, stratified by class, with a fixed seed."""
    train = files["train"]
    total = len(train)
    note: dict[str, float | int] = {"split_seed": seed}
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        if split in files:
            continue
        share = fraction * total / len(train)  # fractions are of the whole train folder
        try:
            train, held_out = train_test_split(
                train, test_size=share, stratify=[label for _, label in train], random_state=seed
            )
        except ValueError as exc:
            raise DataError(f"cannot make a stratified {split} split from the train folder: {exc}") from None
        files[split] = sorted(held_out, key=lambda item: str(item[0]))
        note[f"{split}_from_train"] = fraction
    files["train"] = sorted(train, key=lambda item: str(item[0]))
    return files, note
