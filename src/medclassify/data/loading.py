"""``load_dataset``: one entry point for MedMNIST files, the synthetic sample and image folders."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .catalog import FOLDER_NAME, default_data_dir, get_dataset_info
from .folders import load_folder_dataset
from .memory import LoadedDataset
from .npz import load_npz_dataset
from .synthetic import ensure_synthcells


def load_dataset(
    dataset: str,
    size: int,
    data_dir: str | Path | None = None,
    *,
    channels: int | None = None,
    verify: bool = True,
    download: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> LoadedDataset:
    """Load every split of a MedMNIST dataset, the synthetic sample, or an image folder into memory.

    ``channels`` converts a MedMNIST dataset (grey -> RGB by repeating the channel); for folders it
    picks grey or colour (default: what most images are).
    """
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if dataset == FOLDER_NAME:
        return load_folder_dataset(root, size, channels, val_fraction, test_fraction, split_seed)
    info = get_dataset_info(dataset)
    if info.synthetic:
        ensure_synthcells(root, size)
    loaded = load_npz_dataset(info, size, root, verify=verify and not info.synthetic, download_missing=download)
    loaded.orientation = info.orientation
    if channels is not None and channels != loaded.channels:
        if loaded.channels != 1:
            raise ConfigError(
                f"--channels {channels}: {dataset} has {loaded.channels} channels; only grey data can be expanded to 3"
            )
        for split in loaded.splits.values():
            split.images = split.images.expand(-1, channels, -1, -1).contiguous()
        loaded.channels = channels
    return loaded
