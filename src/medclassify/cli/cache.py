"""``medclassify cache``: a split cache built ahead of time."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from ..errors import MedclassifyError
from .common import Command, add_config_options, size_text


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset", nargs="?", help="MedMNIST dataset or synthcells (leave out for the image folder given as --data-dir)"
    )
    # as train takes them, so both find the same cache; the seed here only splits an image folder
    add_config_options(
        parser, CACHE_OPTIONS, helps={"seed": "seed of the split of an image folder without val/ or test/ (default: 0)"}
    )


# The TrainConfig fields that decide which data a run reads, and so which split cache.
CACHE_OPTIONS = [
    "size", "channels", "data_dir", "cache_dir", "val_fraction", "test_fraction", "seed", "download", "verify",
    "verify_cache",
]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import time

    from ..config import TrainConfig
    from ..data.cache import read_cache
    from ..runs import load_run_data

    data_dir = getattr(args, "data_dir", None)
    if args.dataset is None and not (data_dir and (Path(data_dir).expanduser() / "train").is_dir()):
        raise MedclassifyError("give a dataset name, or --data-dir pointing at an image folder with train/<class>/")
    started = time.perf_counter()
    given = {name: value for name, value in vars(args).items() if name in CACHE_OPTIONS}
    config = TrainConfig(dataset=args.dataset, data_storage="mmap", **given)
    with warnings.catch_warnings():
        # where no cache can be written, a run falls back to memory; this command stops at once instead
        warnings.filterwarnings("error", message=".*without a split cache", category=UserWarning)
        try:
            data = load_run_data(config.validate())  # the data a train command with these options reads
        except UserWarning as exc:
            reason = str(exc).split("; reading ", 1)[0]
            raise MedclassifyError(
                f"{reason}: no split cache was written (--cache-dir DIR puts it elsewhere)"
            ) from None
    seconds = time.perf_counter() - started
    folder = data.source["cache"]
    cache = read_cache(Path(folder))
    if cache is None:
        raise MedclassifyError(f"{folder}: the split cache just written does not read back; delete it and run again")
    shapes = (
        ", ".join(f"{name} {len(split)}" for name, split in data.splits.items())
        + f" images of {data.channels} x {data.size} x {data.size}"
    )
    print(
        f"split cache {folder}: {size_text(cache.nbytes)} ({shapes}); built {cache.record['created']}; this command took {seconds:.1f} s"
    )
    return 0


COMMAND = Command(
    "build a dataset's split cache ahead of time (uncompressed arrays that runs open memory-mapped)",
    "examples:\n  medclassify cache pathmnist --size 224 --data-dir ~/medmnist\n"
    "  medclassify cache --data-dir chest_xray --size 224 --channels 1      # an image folder\n\n"
    "Runs build the cache on first use anyway; this does it ahead, and prints where it is and how big.\n"
    "Delete it at any time; it is rebuilt when the source changes.\n",
    add_options,
    run,
)
