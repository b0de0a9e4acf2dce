"""``TrainConfig``: one plain object describes a run. The CLI builds its ``train`` options from
these fields, a YAML file fills the same fields, and Python code sets them directly."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ..data import FOLDER_NAME, NORMALIZE_CHOICES, get_dataset_info
from ..errors import ConfigError
from ..models import available_models

SELECT_METRICS = ("auc", "acc", "f1", "loss")


def option(default, help: str, *, choices=None):
    """A field with the help and choices its command-line option shows."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    dataset: str | None = option(
        None, "MedMNIST dataset (e.g. bloodmnist), 'synthcells', or 'folder' for an image folder at "
        "--data-dir (default: 'folder' when --data-dir holds a train/ folder)"
    )
    size: int = option(28, "image size in pixels (MedMNIST: 28, 64, 128 or 224)")
    model: str = option("paper-cnn", "model name from the registry (see 'medclassify models')")
    data_dir: str | None = option(None, "folder with the .npz files or the image folder (default: the OS cache, ~/.cache/medclassify)")
    out: str | None = option(None, "run folder to write (default: runs/DATASET_SIZE_MODEL_seedSEED)")
    epochs: int = option(10, "training epochs")
    batch_size: int = option(32, "training batch size")
    lr: float = option(1e-3, "Adam learning rate")
    seed: int = option(0, "random seed for weights, shuffling and folder splits")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps (auto: CUDA, then MPS, then CPU)")
    select_metric: str = option("auc", "validation metric that picks the best checkpoint", choices=SELECT_METRICS)
    normalize: str = option(
        "dataset", "dataset: per-channel mean/std of the training split; half: (x-0.5)/0.5 as in "
        "MedMNIST's examples; none: [0, 1]", choices=NORMALIZE_CHOICES
    )
    channels: int | None = option(None, "1 or 3: image folders are converted to this (default: what most images are); grey MedMNIST data can be repeated to 3", choices=(1, 3))
    val_fraction: float = option(0.1, "image folders without val/: share of train/ held out for validation")
    test_fraction: float = option(0.2, "image folders without test/: share of train/ held out for testing")
    verify: bool = option(True, "check the MD5 of MedMNIST files against the official sums (--no-verify accepts a local variant)")
    download: bool = option(True, "download missing MedMNIST files (--no-download fails instead)")
    amp: bool = option(True, "mixed precision on CUDA (ignored on CPU)")
    num_threads: int | None = option(None, "CPU threads for PyTorch (default: PyTorch's choice)")
    eval_batch_size: int = option(256, "batch size for validation and test")
    resume: bool = option(False, "continue the interrupted run in --out from its last.pt")
    quiet: bool = option(False, "no progress bars or epoch lines")

    # ---- filling ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        keys = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**keys)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the YAML config ({str(exc).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of TrainConfig keys, got {type(values).__name__}")
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict:
        return asdict(self)

    # ---- derived values ----------------------------------------------------------------------
    @property
    def dataset_name(self) -> str:
        if self.dataset:
            return self.dataset.lower()
        if self.data_dir and (Path(self.data_dir).expanduser() / "train").is_dir():
            return FOLDER_NAME
        raise ConfigError("--dataset is required (or give --data-dir a folder that holds train/<class>/ images)")

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out).expanduser()
        return Path("runs") / f"{self.dataset_name}_{self.size}_{self.model}_seed{self.seed}"

    # ---- checking ----------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` naming the option for any impossible value."""
        name = self.dataset_name
        if name == FOLDER_NAME:
            if not self.data_dir:
                raise ConfigError("--dataset folder needs --data-dir pointing at the image folder")
            if not 8 <= self.size <= 1024:
                raise ConfigError(f"--size {self.size}: image folders take sizes from 8 to 1024")
        else:
            info = get_dataset_info(name)
            if self.size not in info.sizes:
                raise ConfigError(
                    f"--size {self.size} is not available for {name}; choose one of {', '.join(map(str, info.sizes))}"
                )
        if self.model not in available_models():
            raise ConfigError(f"--model: unknown model '{self.model}'; choose one of: {', '.join(available_models())}")
        positive_ints = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size}
        if self.num_threads is not None:
            positive_ints["num_threads"] = self.num_threads
        for key, value in positive_ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{flag(key)} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"--lr must be a number > 0, got {self.lr!r}")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0 < value < 0.5:
                raise ConfigError(f"{flag(key)} must be between 0 and 0.5 (exclusive), got {value!r}")
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ConfigError(f"{flag(f.name)} must be one of {', '.join(map(str, choices))}, got {value!r}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        return self


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")

