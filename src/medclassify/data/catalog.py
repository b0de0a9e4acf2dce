"""Which datasets medclassify knows: the 2D MedMNIST collection (from the ``medmnist`` package's
own metadata) and the synthetic sample that ships with medclassify."""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from ..errors import ConfigError, DataError
from ..tasks import Task


@functools.cache
def medmnist_info() -> dict:
    """medmnist's ``INFO`` table (names, tasks, labels, licences, URLs and MD5 sums), read from its
    ``info`` module alone: importing the package runs its ``__init__``, which imports torch and
    scikit-learn, and listing the datasets should not wait for them."""
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the medmnist package is not installed: pip install medmnist")
    path = Path(spec.submodule_search_locations[0]) / "info.py"
    info_spec = importlib.util.spec_from_file_location("_medmnist_info", path)
    if info_spec is None or info_spec.loader is None:
        raise DataError(f"{path}: medmnist's dataset table cannot be read")
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)
    return module.INFO


MEDMNIST_SIZES = (28, 64, 128, 224)
SYNTHETIC_NAME = "synthcells"
FOLDER_NAME = "folder"


# Which geometric transforms keep a label true ("free": any flip or rotation; "mirror-x": left-right
# mirroring and small rotations; "fixed": small rotations and shifts only). medmnist.INFO does not
# say this, so it is medclassify's metadata, by imaging modality:
ORIENTATION = {
    # microscopy, histology, dermatoscopy, fundus: no canonical orientation
    "pathmnist": "free",
    "dermamnist": "free",
    "bloodmnist": "free",
    "tissuemnist": "free",
    "retinamnist": "free",
    # OCT and ultrasound B-scans: depth runs downwards, left-right mirroring is harmless
    "octmnist": "mirror-x",
    "breastmnist": "mirror-x",
    # chest X-rays keep their orientation; abdominal CT has left/right organs (kidney, femur, lung)
    "chestmnist": "fixed",
    "pneumoniamnist": "fixed",
    "organamnist": "fixed",
    "organcmnist": "fixed",
    "organsmnist": "fixed",
}
Orientation = Literal["free", "mirror-x", "fixed"]
ORIENTATIONS: tuple[Orientation, ...] = get_args(Orientation)
# Training presets over these data, named here (no torch needed) so that option lists cost nothing.
Augment = Literal["none", "light", "exact", "strong", "randaug", "medmnistc"]
AUGMENT_CHOICES: tuple[Augment, ...] = get_args(Augment)
Normalize = Literal["dataset", "half", "none"]
NORMALIZE_CHOICES: tuple[Normalize, ...] = get_args(Normalize)

# The paper each dataset's images come from, as MedMNIST v2 (Yang et al., Scientific Data 2023)
# credits them; medmnist.INFO has descriptions and licences but not these.
_KERMANY = (
    "D. S. Kermany et al., Identifying medical diagnoses and treatable diseases by image-based deep learning, "
    "Cell 172(5), 1122-1131 (2018)"
)
_ORGAN = (
    "P. Bilic et al., The Liver Tumor Segmentation Benchmark (LiTS), Medical Image Analysis 84, 102680 (2023); "
    "X. Xu et al., Efficient multiple organ localization in CT image using 3D region proposal network, "
    "IEEE Transactions on Medical Imaging 38(8), 1885-1898 (2019)"
)
SOURCE_PAPERS = {
    "pathmnist": "J. N. Kather et al., Predicting survival from colorectal cancer histology slides using deep learning: "
    "a retrospective multicenter study, PLOS Medicine 16(1), e1002730 (2019)",
    "chestmnist": "X. Wang et al., ChestX-ray8: hospital-scale chest X-ray database and benchmarks on weakly-supervised "
    "classification and localization of common thorax diseases, CVPR 2017",
    "dermamnist": "P. Tschandl, C. Rosendahl, H. Kittler, The HAM10000 dataset, Scientific Data 5, 180161 (2018); "
    "N. Codella et al., Skin lesion analysis toward melanoma detection 2018, arXiv:1902.03368",
    "octmnist": _KERMANY,
    "pneumoniamnist": _KERMANY,
    "retinamnist": "R. Liu et al., DeepDRiD: diabetic retinopathy - grading and image quality estimation challenge, "
    "Patterns 3(6), 100512 (2022)",
    "breastmnist": "W. Al-Dhabyani et al., Dataset of breast ultrasound images, Data in Brief 28, 104863 (2020)",
    "bloodmnist": "A. Acevedo et al., A dataset of microscopic peripheral blood cell images for development of automatic "
    "recognition systems, Data in Brief 30, 105474 (2020)",
    "tissuemnist": "V. Ljosa, K. L. Sokolnicki, A. E. Carpenter, Annotated high-throughput microscopy image sets for "
    "validation, Nature Methods 9(7), 637 (2012)",
    "organamnist": _ORGAN,
    "organcmnist": _ORGAN,
    "organsmnist": _ORGAN,
}


@dataclass(frozen=True)
class DatasetInfo:
    """What medclassify knows of a dataset before reading it: task, channels, classes, sizes, files."""

    name: str
    task: Task
    n_channels: int
    class_names: tuple[str, ...]
    sizes: tuple[int, ...]
    n_samples: dict
    description: str
    license: str
    synthetic: bool = False
    orientation: str = "fixed"  # see ORIENTATION
    source: str = ""  # the paper the images come from (SOURCE_PAPERS)
    title: str = ""  # the name as the papers write it (medmnist's python_class, e.g. BloodMNIST)

    @property
    def display_name(self) -> str:
        return self.title or self.name

    def filename(self, size: int) -> str:
        """MedMNIST's file naming: ``bloodmnist.npz`` at 28 px, ``bloodmnist_64.npz`` above."""
        return f"{self.name}.npz" if size == 28 else f"{self.name}_{size}.npz"

    def url(self, size: int) -> str | None:
        if self.synthetic:
            return None
        return medmnist_info()[self.name]["url" if size == 28 else f"url_{size}"]

    def md5(self, size: int) -> str | None:
        if self.synthetic:
            return None
        return medmnist_info()[self.name]["MD5" if size == 28 else f"MD5_{size}"]


def _from_medmnist(flag: str) -> DatasetInfo:
    meta = medmnist_info()[flag]
    labels = meta["label"]
    return DatasetInfo(
        name=flag,
        task=Task(meta["task"]),
        n_channels=int(meta["n_channels"]),
        class_names=tuple(labels[str(i)] for i in range(len(labels))),
        sizes=MEDMNIST_SIZES,
        n_samples=dict(meta["n_samples"]),
        description=meta["description"],
        license=meta["license"],
        orientation=ORIENTATION.get(flag, "fixed"),
        source=SOURCE_PAPERS.get(flag, ""),
        title=meta.get("python_class", flag),
    )


SYNTHCELLS = DatasetInfo(
    name=SYNTHETIC_NAME,
    task=Task.MULTI_CLASS,
    n_channels=3,
    class_names=("small dark cell", "large pale cell", "bilobed cell", "ring cell"),
    sizes=MEDMNIST_SIZES,
    n_samples={"train": 1200, "val": 200, "test": 400},
    description="Synthetic cell-like RGB images generated deterministically by medclassify "
    "(no real medical data); classes differ in shape, size and colour.",
    license="CC0 (generated)",
    synthetic=True,
    orientation="free",
    source="generated by medclassify (data/synthetic.py); no real images",
)


def medmnist_2d_flags() -> list[str]:
    """2D datasets of the collection, in the ``medmnist`` package's order (3D flags end in ``3d``)."""
    return [flag for flag in medmnist_info() if not flag.endswith("3d")]


def dataset_catalog() -> dict[str, DatasetInfo]:
    """Every 2D MedMNIST dataset (from medmnist's INFO) and the bundled synthetic one.

    Returns:
        Dataset name (``bloodmnist``, ``synthcells``) to its task, channels, classes, sizes,
        licence and source.
    """
    catalog = {flag: _from_medmnist(flag) for flag in medmnist_2d_flags()}
    catalog[SYNTHETIC_NAME] = SYNTHCELLS
    return catalog


def get_dataset_info(name: str) -> DatasetInfo:
    """The catalog entry of ``name`` (any case); an unknown name is a :class:`ConfigError` listing the known ones."""
    catalog = dataset_catalog()
    key = name.lower()
    if key not in catalog:
        raise ConfigError(
            f"unknown dataset '{name}'; choose one of: {', '.join(catalog)}, "
            f"or '{FOLDER_NAME}' for an image folder (see 'medclassify datasets')"
        )
    return catalog[key]


def default_data_dir() -> Path:
    """The OS cache folder (``$XDG_CACHE_HOME/medclassify``, else ``~/.cache/medclassify``)."""
    env = os.environ.get("MEDCLASSIFY_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "medclassify"
