"""Data: the dataset catalog, MedMNIST files, image folders, single image files and the in-memory
batch loader.

Attributes load on first use, so that reading an image file (``data.images``) does not import torch.
"""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach(
    __name__,
    submod_attrs={
        "augment": ["BatchAugment", "tta_views"],
        "cache": ["CACHE_FOLDER", "STORAGES", "cache_root", "list_caches", "storage_line"],
        "corruptions": ["Corruption", "corrupt", "corruption_set", "random_corruptions"],
        "catalog": [
            "AUGMENT_CHOICES",
            "FOLDER_NAME",
            "MEDMNIST_SIZES",
            "ORIENTATIONS",
            "SYNTHETIC_NAME",
            "DatasetInfo",
            "dataset_catalog",
            "default_data_dir",
            "get_dataset_info",
            "medmnist_info",
            "NORMALIZE_CHOICES",
        ],
        "folders": ["load_folder_dataset"],
        "loading": ["load_dataset"],
        "memory": ["BatchLoader", "LoadedDataset", "Normalization", "PixelSums", "Split", "compute_normalization"],
        "npz": ["load_npz_dataset"],
        "synthetic": ["ensure_synthcells"],
    },
)
