"""Image folders in the ``train/ [val/] [test/]`` + one-sub-folder-per-class layout (e.g. the Kaggle
chest X-ray set: ``chest_xray/train/NORMAL``, ``chest_xray/train/PNEUMONIA``).

Every image is decoded once with Pillow, converted to grey or RGB and resized to ``size`` x
``size`` (the aspect ratio is not kept, as MedMNIST's own resizing), then held in memory.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from ..errors import DataError
from ..tasks import Task
from .images import pil_to_rgb, resize_rgb, to_channels
from .memory import LoadedDataset, Split


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _decode(path: Path, size: int) -> tuple[np.ndarray, bool, str] | None:
    """Decode one file into a size x size RGB array; None when it is not a readable image."""
    try:
        data = path.read_bytes()
        with Image.open(path) as image:
            image.load()
            rgb, grey = pil_to_rgb(image)
            pixels = resize_rgb(rgb, size)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    return pixels, grey, hashlib.md5(data).hexdigest()


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
) -> LoadedDataset:
    """An image folder (``train/CLASS/*``, optional ``val/`` and ``test/``) resized to ``size``; missing
    splits are held out of train/ by class, with ``split_seed``. ``source['files']`` says which file went where."""
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
    everything = [item for s in present for item in files[s]]
    with ThreadPoolExecutor(max_workers=4) as pool:  # Pillow releases the GIL while decoding
        decoded = dict(zip([p for p, _ in everything], pool.map(lambda item: _decode(item[0], size), everything)))
    unreadable = [p for p, result in decoded.items() if result is None]
    if unreadable:
        shown = ", ".join(str(p.relative_to(root)) for p in unreadable[:20])
        more = f" and {len(unreadable) - 20} more" if len(unreadable) > 20 else ""
        warnings.warn(f"skipped {len(unreadable)} file(s) that are not readable images: {shown}{more}", stacklevel=2)
    files = {s: [(p, label) for p, label in items if decoded[p] is not None] for s, items in files.items()}

    if channels is None:  # what most images are
        greys = sum(decoded[p][1] for items in files.values() for p, _ in items)
        total = sum(len(items) for items in files.values())
        channels = 1 if greys * 2 >= total else 3

    split_note = {}
    if "val" not in files or "test" not in files:
        files, split_note = _stratified_split(files, val_fraction, test_fraction, split_seed)

    splits = {}
    for split in ("train", "val", "test"):
        items = files[split]
        if not items:
            raise DataError(f"{root}: the {split} split has no readable images")
        counts = Counter(label for _, label in items)
        empty = [class_names[k] for k in range(len(class_names)) if counts[k] == 0]
        if split == "train" and empty:
            raise DataError(f"{train_dir}: class folder(s) {', '.join(empty)} hold no readable images")
        images = torch.from_numpy(to_channels(np.stack([decoded[p][0] for p, _ in items]), channels))
        splits[split] = Split(images, torch.tensor([label for _, label in items], dtype=torch.int64))

    listing = sorted((str(p.relative_to(root)), decoded[p][2]) for items in files.values() for p, _ in items)
    digest = hashlib.md5("\n".join(f"{rel}\t{md5}" for rel, md5 in listing).encode()).hexdigest()
    return LoadedDataset(
        name=root.name or "folder",
        task=Task.BINARY if len(class_names) == 2 else Task.MULTI_CLASS,
        class_names=class_names,
        channels=channels,
        size=size,
        splits=splits,
        source={
            "kind": "folder",
            "root": str(root.resolve()),
            "md5": digest,  # over every used file's relative path and content MD5
            "split_sizes": {s: len(split) for s, split in splits.items()},
            "skipped_files": [str(p.relative_to(root)) for p in unreadable],
            **split_note,
            "files": {s: [str(p.relative_to(root)) for p, _ in items] for s, items in files.items()},
        },
    )


def _stratified_split(files: dict, val_fraction: float, test_fraction: float, seed: int) -> tuple[dict, dict]:
    """Carve the missing val/test splits out of train, stratified by class, with a fixed seed."""
    train = files["train"]
    total = len(train)
    note = {"split_seed": seed}
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
