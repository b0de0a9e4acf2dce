"""``medclassify datasets``: the datasets, their files and their split caches."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import Command, home, size_text


def add_options(parser: argparse.ArgumentParser) -> None:
    from ..data import default_data_dir

    parser.add_argument("--data-dir", help=f"where to look for files (default: {home(default_data_dir())})")
    from ..data import cache_root

    parser.add_argument("--cache-dir", help=f"where the split caches are (default: {home(cache_root())})")


def run(args: argparse.Namespace) -> int:
    from ..data import MEDMNIST_SIZES, cache_root, dataset_catalog, default_data_dir, list_caches

    root = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    caches_root = cache_root(args.cache_dir)
    caches = list_caches(caches_root)
    cached_sizes: dict[str, list[str]] = {}
    for cache in caches:  # the cached column: caches of this folder's files
        source = Path(cache.record["source"].get("file", ""))
        if cache.record.get("kind") == "npz" and source.parent == root.resolve():
            cached_sizes.setdefault(cache.record["name"], []).append(_cache_label(cache.record))
    print(f"files in {root}; split caches in {caches_root}\n")
    print(
        f"{'dataset':<16}{'task':<28}{'ch':>3}{'classes':>8}  {'train/val/test':<20}{'sizes':<16}{'on disk':<12}cached"
    )
    for name, info in dataset_catalog().items():
        on_disk = [str(s) for s in MEDMNIST_SIZES if (root / info.filename(s)).is_file()]
        counts = "/".join(str(info.n_samples[s]) for s in ("train", "val", "test"))
        task = info.task + (" (synthetic)" if info.synthetic else "")
        print(
            f"{name:<16}{task:<28}{info.n_channels:>3}{len(info.class_names):>8}  {counts:<20}"
            f"{','.join(map(str, info.sizes)):<16}{','.join(on_disk) or '-':<12}{','.join(cached_sizes.get(name, [])) or '-'}"
        )
    if caches:
        print()
    for cache in caches:
        record = cache.record
        print(
            f"{cache.folder}: {size_text(cache.nbytes)}, {record['name']} at {record['size']} px, {record['channels']} "
            f"channel(s), from {record['source'].get('file') or record['source'].get('root')}"
        )
    if caches:
        print("(a split cache can be deleted at any time; the next run that needs it builds it again)")
    print("\nfolder: your own images in DIR/train/<class>/ (optional val/, test/): medclassify train --data-dir DIR")
    return 0


def _cache_label(record: dict) -> str:
    """A cache's size, with its channels when they are a conversion (e.g. ``64/3ch``)."""
    converted = record.get("kind") == "npz" and record["channels"] != _native_channels(record["name"])
    return f"{record['size']}" + (f"/{record['channels']}ch" if converted else "")


def _native_channels(name: str) -> int | None:
    from ..data import dataset_catalog

    info = dataset_catalog().get(name)
    return info.n_channels if info else None


COMMAND = Command(
    "list the available datasets and which files are on disk",
    "example:\n  medclassify datasets --data-dir ~/medmnist\n",
    add_options,
    run,
)
