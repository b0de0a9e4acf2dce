"""``load_dataset``: one entry point for MedMNIST files, the synthetic sample and image folders."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .cache import STORAGES
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
    cache_dir: str | Path | None = None,
    storage: str = "auto",
    verify_cache: bool = False,
) -> LoadedDataset:
    """Load every split of a MedMNIST dataset, the synthetic sample, or an image folder.

    The splits come from the data's split cache (built on first use, in the user's cache folder or
    ``cache_dir``): read into memory or memory-mapped, as ``storage`` says (``auto``: by size).
    ``verify_cache`` recomputes what a cache trusts from its record: a file's MD5 (otherwise taken
    as recorded while the file's size and modification time are), an image folder's whole cache.

    Args:
        dataset: a MedMNIST name (``bloodmnist``), ``synthcells`` or ``folder``.
        size: the image size in pixels (MedMNIST: 28, 64, 128 or 224; folders: 8 to 1024).
        data_dir: the folder of the official files, or the image folder (default: the user's data folder).
        channels: converts a MedMNIST dataset (grey -> RGB by repeating the channel); for folders it
            picks grey or colour (default: what most images are).
        verify: check MedMNIST files against their official MD5.
        download: download a missing MedMNIST file.
        val_fraction: the share of ``train/`` held out for validation when a folder has no ``val/``.
        test_fraction: the share of ``train/`` held out for testing when a folder has no ``test/``.
        split_seed: seeds the stratified split of a folder's ``train/``.
        cache_dir: where split caches live (default: the user's cache folder).
        storage: ``memory``, ``mmap`` or ``auto``.
        verify_cache: recompute what a cache trusts from its record.

    Returns:
        The splits (uint8 N x C x H x W images, labels), class names, task and the data's source record.
    """
    if storage not in STORAGES:
        raise ConfigError(
            f"data_storage {storage!r}: choose one of {', '.join(STORAGES)}", parameters=("data_storage",)
        )
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if dataset == FOLDER_NAME:
        return load_folder_dataset(
            root,
            size,
            channels,
            val_fraction,
            test_fraction,
            split_seed,
            cache_dir=cache_dir,
            storage=storage,
            rebuild=verify_cache,
        )
    info = get_dataset_info(dataset)
    if channels is not None and channels != info.n_channels and info.n_channels != 1:
        raise ConfigError(
            f"--channels {channels}: {dataset} has {info.n_channels} channels; only grey data can be expanded to 3"
        )
    if info.synthetic:
        ensure_synthcells(root, size)
    loaded = load_npz_dataset(
        info,
        size,
        root,
        verify=verify and not info.synthetic,
        download_missing=download,
        channels=channels,
        cache_dir=cache_dir,
        storage=storage,
        verify_cache=verify_cache,
    )
    loaded.orientation = info.orientation
    return loaded
