# The public names, for type checkers and IDEs; lazy_loader.attach_stub reads the same imports to load
# each module on first use.

from .augment import (
    BatchAugment as BatchAugment,
)
from .augment import (
    tta_views as tta_views,
)
from .cache import (
    CACHE_FOLDER as CACHE_FOLDER,
)
from .cache import (
    STORAGES as STORAGES,
)
from .cache import (
    cache_root as cache_root,
)
from .cache import (
    list_caches as list_caches,
)
from .cache import (
    storage_line as storage_line,
)
from .catalog import (
    AUGMENT_CHOICES as AUGMENT_CHOICES,
)
from .catalog import (
    FOLDER_NAME as FOLDER_NAME,
)
from .catalog import (
    MEDMNIST_SIZES as MEDMNIST_SIZES,
)
from .catalog import (
    NORMALIZE_CHOICES as NORMALIZE_CHOICES,
)
from .catalog import (
    ORIENTATIONS as ORIENTATIONS,
)
from .catalog import (
    SYNTHETIC_NAME as SYNTHETIC_NAME,
)
from .catalog import (
    DatasetInfo as DatasetInfo,
)
from .catalog import (
    dataset_catalog as dataset_catalog,
)
from .catalog import (
    default_data_dir as default_data_dir,
)
from .catalog import (
    get_dataset_info as get_dataset_info,
)
from .catalog import (
    medmnist_info as medmnist_info,
)
from .corruptions import (
    Corruption as Corruption,
)
from .corruptions import (
    corrupt as corrupt,
)
from .corruptions import (
    corruption_set as corruption_set,
)
from .corruptions import (
    random_corruptions as random_corruptions,
)
from .folders import (
    load_folder_dataset as load_folder_dataset,
)
from .loading import (
    load_dataset as load_dataset,
)
from .memory import (
    BatchLoader as BatchLoader,
)
from .memory import (
    LoadedDataset as LoadedDataset,
)
from .memory import (
    Normalization as Normalization,
)
from .memory import (
    PixelSums as PixelSums,
)
from .memory import (
    Split as Split,
)
from .memory import (
    compute_normalization as compute_normalization,
)
from .npz import (
    load_npz_dataset as load_npz_dataset,
)
from .synthetic import (
    ensure_synthcells as ensure_synthcells,
)

__all__ = [
    "AUGMENT_CHOICES",
    "BatchAugment",
    "BatchLoader",
    "CACHE_FOLDER",
    "Corruption",
    "DatasetInfo",
    "FOLDER_NAME",
    "LoadedDataset",
    "MEDMNIST_SIZES",
    "NORMALIZE_CHOICES",
    "Normalization",
    "ORIENTATIONS",
    "PixelSums",
    "STORAGES",
    "SYNTHETIC_NAME",
    "Split",
    "cache_root",
    "compute_normalization",
    "corrupt",
    "corruption_set",
    "dataset_catalog",
    "default_data_dir",
    "ensure_synthcells",
    "get_dataset_info",
    "list_caches",
    "load_dataset",
    "load_folder_dataset",
    "load_npz_dataset",
    "medmnist_info",
    "random_corruptions",
    "storage_line",
    "tta_views",
]
