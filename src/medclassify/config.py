"""``TrainConfig``: one plain object describes a run. The CLI builds its ``train`` options from
these fields, a YAML file fills the same fields, and Python code sets them directly."""

from __future__ import annotations

import importlib.util
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from .data import FOLDER_NAME, get_dataset_info
from .data.cache import Storage
from .data.catalog import Augment, Normalize, Orientation
from .defaults import CONFORMAL_SCORES, DEVICE_HELP, ConformalScore, CorruptionSet, Tracker
from .errors import ConfigError, first_line

SelectMetric = Literal["auc", "acc", "f1", "loss"]
SELECT_METRICS: tuple[SelectMetric, ...] = get_args(SelectMetric)
Calibration = Literal["none", "temperature"]
CALIBRATION_CHOICES: tuple[Calibration, ...] = get_args(Calibration)
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["none", "cosine", "onecycle", "step"]
ClassWeights = Literal["none", "balanced"]
Sampler = Literal["shuffle", "balanced"]
Loss = Literal["ce", "focal"]
Mix = Literal["none", "mixup", "cutmix", "mixup-cutmix"]
PostTrainingCorruptions = Literal["none", CorruptionSet]
# keys of configs written before they were renamed (config.json of older runs, YAML files) -> their names now
RENAMED_KEYS = {"calibrate": "calibration", "robustness": "corruptions"}
MIX_CHOICES: tuple[Mix, ...] = get_args(Mix)
DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
MAX_SEED = 2**32 - 1


def option(default: Any, help: str, *, resumable: bool = False) -> Any:
    """A field with the help its command-line option shows (its choices are its ``Literal`` type's,
    :func:`field_choices`); ``resumable``: the value may change when an interrupted run is resumed."""
    return field(default=default, metadata={"help": help, "resumable": resumable})


def _literal_values(hint: Any) -> tuple:
    """The values of a ``Literal`` type, also inside ``X | None`` or ``list[X]``; () for other types."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    for inner in typing.get_args(hint):
        values = _literal_values(inner)
        if values:
            return values
    return ()


_CHOICES: dict[type, dict[str, tuple]] = {}


def field_choices(config_type: type) -> dict[str, tuple]:
    """A config dataclass's fields that take one of a few values, and those values (from their
    ``Literal`` types): what the command line offers and :meth:`TrainConfig.validate` accepts."""
    if config_type not in _CHOICES:
        hints = typing.get_type_hints(config_type)
        _CHOICES[config_type] = {
            f.name: values for f in fields(config_type) if (values := _literal_values(hints[f.name]))
        }
    return _CHOICES[config_type]


@dataclass
class RunConfig:
    """The settings that define a run: its data, model and recipe. ``--resume`` refuses to continue
    a run under other values, except for the fields marked ``resumable`` (more epochs, and what is
    done after training)."""

    dataset: str | None = option(
        None,
        "MedMNIST dataset (e.g. bloodmnist), 'synthcells', or 'folder' for an image folder at "
        "--data-dir (default: 'folder' when --data-dir holds a train/ folder)",
    )
    size: int = option(28, "image size in pixels (MedMNIST: 28, 64, 128 or 224)")
    model: str = option("paper-cnn", "model name from the registry (see 'medclassify models')")
    epochs: int = option(10, "training epochs", resumable=True)
    batch_size: int = option(32, "training batch size")
    lr: float = option(1e-3, "learning rate (the peak rate with a schedule)")
    seed: int = option(0, "random seed for weights, shuffling and folder splits")
    select_metric: SelectMetric = option("auc", "validation metric that picks the best checkpoint")
    normalize: Normalize = option(
        "dataset",
        "dataset: per-channel mean/std of the training split; half: (x-0.5)/0.5 as in "
        "MedMNIST's examples; none: [0, 1]",
    )
    channels: Literal[1, 3] | None = option(
        None,
        "1 or 3: image folders are converted to this (default: what most images are); grey MedMNIST data can be repeated to 3",
    )
    val_fraction: float = option(0.1, "image folders without val/: share of train/ held out for validation")
    test_fraction: float = option(0.2, "image folders without test/: share of train/ held out for testing")
    recipe: str | None = option(
        None, "a named recipe from the package's recipes/ folder (see 'medclassify recipes'); other options override it"
    )
    pretrained: bool = option(
        False, "start from torchvision's ImageNet weights (resnet18, resnet50, vgg11-bn, mobilenet-v3-small)"
    )
    freeze_backbone: bool = option(False, "train only the classification head")
    unfreeze_after: int | None = option(None, "with --freeze-backbone: fine-tune every layer after this many epochs")
    augment: Augment = option(
        "none",
        "batch augmentation: none (the paper), light (flips/rotation/shift as the data allow), exact (flips, "
        "right-angle turns and whole-pixel shifts as the data allow, no resampling: nothing is blurred), strong "
        "(light plus crop scale and intensity jitter), randaug (light, then two random intensity operations per "
        "image, RandAugment-style), medmnistc (exact, then per image one of MedMNIST-C's corruptions for the "
        "dataset, or none, at a random intensity)",
    )
    orientation: Orientation | None = option(
        None,
        "which geometric transforms keep labels true: free, mirror-x or fixed (default: the dataset's metadata; image folders: fixed)",
    )
    optimizer: Optimizer = option("adam", "adam (the paper), adamw or sgd (with --momentum)")
    weight_decay: float = option(0.0, "weight decay")
    momentum: float = option(0.9, "SGD momentum (Nesterov)")
    schedule: Schedule = option("none", "learning-rate schedule, stepped every batch")
    milestones: list[int] | None = option(None, "step schedule: epochs after which the rate is multiplied by --gamma")
    gamma: float = option(0.1, "step schedule: the factor at each milestone")
    warmup_epochs: int = option(0, "epochs of linear learning-rate warm-up")
    class_weights: ClassWeights = option("none", "balanced: weight the loss by n / (k * n_class)")
    sampler: Sampler = option("shuffle", "shuffle (the paper) or balanced: draw every class equally often")
    loss: Loss = option("ce", "ce (cross-entropy) or focal")
    focal_gamma: float = option(2.0, "focal loss gamma (0 gives cross-entropy)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy targets, as torch.nn.CrossEntropyLoss")
    early_stopping: int = option(0, "stop after this many epochs without improvement of --select-metric (0: off)")
    grad_clip: float = option(0.0, "clip the gradient norm to this value (0: off)")
    ema_decay: float = option(
        0.0,
        "keep an exponential moving average of the weights with this decay per step (e.g. 0.998); it is "
        "validated, checkpointed and tested in place of the raw weights (0: off)",
    )
    mix: Mix = option(
        "none",
        "mix pairs of training images and their labels: mixup, cutmix, or either per batch (single-label tasks)",
    )
    mix_alpha: float = option(1.0, "Beta(alpha, alpha) for the mixing proportion of --mix")
    time_budget: str | None = option(
        None,
        "train within this wall time, e.g. 10m, 90s or 1h (at most 30 days): the first steps are timed and the "
        "epochs are set so that training and the test evaluation end within it, at most --epochs (the chosen "
        "epochs go into config.json)",
        resumable=True,
    )
    tta: bool = option(False, "test-time augmentation: average the predictions over the label-safe flips")


@dataclass
class PostTrainingConfig:
    """What is done with a finished run's model on its validation and test splits: a temperature,
    an operating point, conformal prediction sets and a robustness test. ``train`` does it right after
    training (these are :class:`TrainConfig` fields), ``calibrate`` and ``robustness`` at any time later;
    all of them are filled and checked here. Changing them never changes the trained weights, so a
    resumed run may ask for other values."""

    calibration: Calibration = option(
        "none",
        "temperature: fit a temperature on the validation split and store it in the bundle; none: keep the "
        "bundle's (e.g. to set only a threshold)",
        resumable=True,
    )
    threshold: str | None = option(
        None,
        "choose the decision threshold on the validation split: youden, sensitivity=0.95, specificity=0.9 or a "
        "probability (binary tasks, or with --positive-class) (default: none)",
        resumable=True,
    )
    positive_class: str | None = option(
        None,
        "with --threshold: the class decided against the rest (default: the second class of a binary task)",
        resumable=True,
    )
    conformal: float | None = option(
        None,
        "calibrate conformal prediction sets on the validation split at this miscoverage: 0.1 gives per image a "
        "set of classes that holds the true class of 9 in 10 new images like the validation ones (single-label "
        "tasks) (default: none)",
        resumable=True,
    )
    conformal_score: ConformalScore = option(
        CONFORMAL_SCORES[0],
        "with --conformal: lac (the smallest sets; empty when no class is likely enough) or aps (the most "
        "probable classes up to a total probability; never empty, so it covers more than asked)",
        resumable=True,
    )
    mondrian: bool = option(
        False,
        "with --conformal: one threshold per class, so that every class (rare ones too) gets the coverage",
        resumable=True,
    )
    corruptions: PostTrainingCorruptions = option(
        "none",
        "evaluate the test split under corruptions at five severities: medmnistc (MedMNIST-C's for the dataset), "
        "generic (for any images), auto (medmnistc where it has the dataset), or none",
        resumable=True,
    )

    def calibrates(self) -> bool:
        """Whether anything is fitted on the validation split (a temperature, a threshold or conformal sets)."""
        return self.calibration != "none" or self.threshold is not None or self.conformal is not None

    def check(self) -> None:
        """Raise :class:`ConfigError` for settings that contradict each other or are out of range."""
        if self.threshold is not None:
            from .evaluation.threshold import parse_rule

            parse_rule(self.threshold)
        elif self.positive_class is not None:
            raise ConfigError(
                "positive_class needs threshold (the rule that chooses the threshold for that class)",
                parameters=("positive_class", "threshold"),
            )
        if self.conformal is not None:
            from .evaluation.conformal import check_level

            check_level(self.conformal)
        elif self.mondrian or self.conformal_score != CONFORMAL_SCORES[0]:
            given = "mondrian" if self.mondrian else "conformal_score"
            raise ConfigError(
                f"{given} needs conformal (the miscoverage of the prediction sets it shapes)",
                parameters=(given, "conformal"),
            )


@dataclass
class RuntimeConfig:
    """Where and how a run executes: paths, device, threads, output. These may differ between an
    interrupted run and its resumption."""

    data_dir: str | None = option(
        None, "folder with the .npz files or the image folder (default: the OS cache, ~/.cache/medclassify)"
    )
    out: str | None = option(
        None,
        "run folder to write (default: runs/DATASET_SIZE_MODEL_seedSEED; image folders: the folder's name for DATASET)",
    )
    cache_dir: str | None = option(
        None,
        "folder for the split caches (default: $MEDCLASSIFY_CACHE, else ~/.cache/medclassify/split-cache or "
        "$XDG_CACHE_HOME/medclassify/split-cache): each split decoded once into uncompressed arrays that later "
        "runs open memory-mapped",
    )
    verify_cache: bool = option(
        False,
        "recompute the data file's MD5 instead of trusting the split cache's record of it (which stands while "
        "the file's size and modification time are unchanged); an image folder's cache is built again",
    )
    data_storage: Storage = option(
        "auto",
        "how the splits are held: memory (read into RAM), mmap (memory-mapped from the split cache: every process "
        "shares one copy), or auto (memory while the copies of the machine's processes total at most 1 GiB, mmap above)",
    )
    device: str = option("auto", DEVICE_HELP)
    num_threads: int | None = option(None, "CPU threads for PyTorch (default: PyTorch's choice)")
    eval_batch_size: int = option(256, "batch size for validation and test")
    amp: bool = option(True, "mixed precision on CUDA (ignored on CPU)")
    channels_last: bool = option(
        False,
        "keep weights and batches channels-last: faster convolutions on CPUs (oneDNN) and GPUs; the numbers "
        "differ from the default layout's in the last digits",
    )
    fused_optimizer: bool = option(
        False,
        "run the optimiser's update as one fused kernel over all weights (PyTorch's fused=True): faster steps "
        "for small models; the numbers differ from the default's in the last digits",
    )
    cpu_bf16: bool = option(
        False,
        "on a CPU with bfloat16 instructions (AMX, AVX512-BF16), run the training steps under bfloat16 autocast "
        "(validation and test stay float32): about 2x faster convolutions at batch 128; the numbers differ from "
        "float32's; ignored on other CPUs, where bfloat16 would be emulated, and on GPUs (see --amp)",
    )
    download: bool = option(True, "download missing MedMNIST files (--no-download fails instead)")
    verify: bool = option(
        True, "check the MD5 of MedMNIST files against the official sums (--no-verify accepts a local variant)"
    )
    resume: bool = option(False, "continue the interrupted run in --out from its last.pt")
    quiet: bool = option(False, "no progress bars or epoch lines")
    track: list[Tracker] | None = option(
        None,
        "report the run to experiment trackers as it trains: tensorboard (RUN/tensorboard) and/or mlflow "
        "(MLFLOW_TRACKING_URI, default mlruns/ here); needs pip install 'medclassify[tracking]'",
    )
    mlflow_parent: str | None = option(None, "with --track mlflow: log as a child of this MLflow run (studies set it)")


@dataclass
class TrainConfig(RuntimeConfig, PostTrainingConfig, RunConfig):
    """A run as the CLI, a YAML file and Python fill it: one flat set of keys, the fields of
    :class:`RunConfig`, :class:`PostTrainingConfig` and :class:`RuntimeConfig`."""

    # ---- filling ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        """Fill the fields from a mapping; a ``recipe`` key first fills them from that recipe.

        Args:
            values: TrainConfig keys (``-`` or ``_``; the old names ``calibrate`` and ``robustness``
                are read as ``calibration`` and ``corruptions``) and their values.
            source: what the values came from, named in an error (a file name, ``"study"``).

        Returns:
            The checked config.

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or an unknown recipe, in one line.
        """
        known = {f.name for f in fields(cls)}
        keys = {k.replace("-", "_"): v for k, v in values.items()}
        keys = {RENAMED_KEYS.get(k, k): v for k, v in keys.items()}
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        if keys.get("recipe"):
            if not isinstance(keys["recipe"], str):
                raise ConfigError(f"{source}: recipe: expected a recipe name, got {keys['recipe']!r}")
            keys = {**load_recipe(keys["recipe"]), **keys}
        return checked_config(keys, source)

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> TrainConfig:
        """A named recipe with some fields overridden, e.g. ``from_recipe("paper-bn-aug", dataset="bloodmnist")``.

        Args:
            name: a recipe of the package (``medclassify recipes`` lists them).
            **overrides: TrainConfig fields that replace the recipe's.

        Returns:
            The checked config.
        """
        return cls.from_dict({**overrides, "recipe": name})

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Fill the fields from a YAML mapping of TrainConfig keys; a bad file is one :class:`ConfigError` line.

        Args:
            path: the YAML file.

        Returns:
            The checked config.
        """
        return cls.from_dict(read_yaml_mapping(path, "YAML config", "a mapping of TrainConfig keys", {}), str(path))

    def to_dict(self) -> dict:
        return asdict(self)

    def fixed_settings(self) -> dict:
        """The :class:`RunConfig` values a resumed run must share with the run it continues.

        Returns:
            Field name to value, for every field that changes what a run computes.
        """
        return {f.name: getattr(self, f.name) for f in fields(RunConfig) if not f.metadata["resumable"]}

    # ---- derived values ----------------------------------------------------------------------
    @property
    def dataset_name(self) -> str:
        """The dataset in lower case; 'folder' when only --data-dir (with a train/ folder) is given."""
        if self.dataset:
            return self.dataset.lower()
        if self.data_dir and (Path(self.data_dir).expanduser() / "train").is_dir():
            return FOLDER_NAME
        raise ConfigError(
            "dataset is required (or give data_dir a folder that holds train/<class>/ images)",
            parameters=("dataset", "data_dir"),
        )

    def run_dir(self) -> Path:
        """The run folder.

        Returns:
            ``out`` if set, else ``runs/DATASET_SIZE_MODEL_seedSEED`` (an image folder's own name
            for DATASET).
        """
        if self.out:
            return Path(self.out).expanduser()
        name = self.dataset_name
        if name == FOLDER_NAME:  # the image folder's own name, so that two folders do not share a run
            name = Path(self.data_dir or ".").expanduser().resolve().name or FOLDER_NAME
        return Path("runs") / f"{name}_{self.size}_{self.model}_seed{self.seed}"

    # ---- checking ----------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the option for any impossible value.

        Returns:
            The config itself, so that ``TrainConfig(...).validate()`` can be passed on.
        """
        if self.recipe:
            load_recipe(self.recipe)  # an unknown name fails here, naming the choices
        name = self.dataset_name
        if name == FOLDER_NAME:
            if not self.data_dir:
                raise ConfigError(
                    "dataset folder needs data_dir pointing at the image folder", parameters=("dataset", "data_dir")
                )
            if not 8 <= self.size <= 1024:
                raise ConfigError(f"size {self.size}: image folders take sizes from 8 to 1024", parameters=("size",))
        else:
            info = get_dataset_info(name)
            if self.size not in info.sizes:
                raise ConfigError(
                    f"size {self.size} is not available for {name}; choose one of {', '.join(map(str, info.sizes))}",
                    parameters=("size",),
                )
        from .models import available_models  # torch: only when a config is checked, not for --help

        if self.model not in available_models():
            raise ConfigError(
                f"model: unknown model '{self.model}'; choose one of: {', '.join(available_models())}",
                parameters=("model",),
            )
        positive_ints = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size}
        if self.num_threads is not None:
            positive_ints["num_threads"] = self.num_threads
        for key, value in positive_ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key} must be a whole number >= 1, got {value!r}", parameters=(key,))
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a number > 0, got {self.lr!r}", parameters=("lr",))
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0 < value < 0.5:
                raise ConfigError(f"{key} must be between 0 and 0.5 (exclusive), got {value!r}", parameters=(key,))
        for f in fields(self):
            choices = field_choices(type(self)).get(f.name)
            value = getattr(self, f.name)
            if (
                choices
                and value is not None
                and any(v not in choices for v in (value if isinstance(value, list) else [value]))
            ):
                raise ConfigError(
                    f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}", parameters=(f.name,)
                )
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(
                f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}", parameters=("device",)
            )
        for key in ("weight_decay", "focal_gamma", "grad_clip", "momentum"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{key} must be a number >= 0, got {value!r}", parameters=(key,))
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}", parameters=("ema_decay",))
        if not (isinstance(self.mix_alpha, (int, float)) and math.isfinite(self.mix_alpha) and self.mix_alpha > 0):
            raise ConfigError(f"mix_alpha must be a number > 0, got {self.mix_alpha!r}", parameters=("mix_alpha",))
        if self.mix != "none" and self.loss == "focal":
            raise ConfigError(
                "mix needs the cross-entropy loss (mixed targets are soft); drop loss focal", parameters=("mix", "loss")
            )
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}", parameters=("label_smoothing",)
            )
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma!r}", parameters=("gamma",))
        for key in ("warmup_epochs", "early_stopping"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{key} must be a whole number >= 0, got {value!r}", parameters=(key,))
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"warmup_epochs {self.warmup_epochs} must be fewer than epochs {self.epochs}",
                parameters=("warmup_epochs", "epochs"),
            )
        if self.schedule == "step" and not self.milestones:
            raise ConfigError("schedule step needs milestones, e.g. [5, 8]", parameters=("schedule", "milestones"))
        if self.milestones and any(not isinstance(m, int) or not 0 < m < self.epochs for m in self.milestones):
            raise ConfigError(
                f"milestones must be epochs between 1 and {self.epochs - 1}, got {self.milestones}",
                parameters=("milestones",),
            )
        if self.unfreeze_after is not None and (not self.freeze_backbone or not 0 < self.unfreeze_after < self.epochs):
            raise ConfigError(
                f"unfreeze_after needs freeze_backbone and a value between 1 and {self.epochs - 1}",
                parameters=("unfreeze_after", "freeze_backbone"),
            )
        check_seed(self.seed)
        self.check()
        for tracker in self.track or []:  # the module is named after the tracker
            if not _importable(tracker):
                raise ConfigError(
                    f"track {tracker} needs the {tracker} package: pip install 'medclassify[tracking]'",
                    parameters=("track",),
                )
        if self.pretrained and not available_models()[self.model].pretrained:
            with_weights = [n for n, e in available_models().items() if e.pretrained]
            raise ConfigError(
                f"pretrained: model '{self.model}' has no ImageNet weights; models with weights: {', '.join(with_weights)}",
                parameters=("pretrained",),
            )
        return self


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError, AttributeError):  # e.g. a module set to None in sys.modules
        return False


@lru_cache(maxsize=1)
def _config_adapter() -> Any:  # a pydantic TypeAdapter; pydantic is imported when a file is checked
    import pydantic

    return pydantic.TypeAdapter(TrainConfig)


def validation_line(source: str, exc: Any) -> str:  # a pydantic ValidationError
    """A pydantic ValidationError as one line: where, what is wrong, and the value given."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "value"
    given = repr(first.get("input"))
    given = given if len(given) <= 60 else given[:59] + "…"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {where}: {first.get('msg', 'invalid')}, got {given}{more}"


def checked_config(values: dict, source: str = "config") -> TrainConfig:
    """A TrainConfig whose fields have the types they are declared with (a YAML ``gamma: null`` or
    ``verify: "no"`` is refused or read as meant, never used as it came)."""
    import pydantic

    try:
        return _config_adapter().validate_python(values)
    except pydantic.ValidationError as exc:
        raise ConfigError(validation_line(source, exc)) from None


def read_yaml_mapping(path: str | Path, what: str, expected: str, empty: dict | None = None) -> dict:
    """A YAML file's top-level mapping (an empty file reads as ``empty``); anything unreadable, or not
    a mapping, is one :class:`ConfigError` line naming the file."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not text (UnicodeDecodeError)
        raise ConfigError(f"{path}: cannot read the {what} ({first_line(exc)})") from None
    values = empty if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected {expected}, got {type(values).__name__}")
    return values


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` settings (``epochs=1``, ``milestones=[5, 8]``, ``verify=false``) as TrainConfig keys and
    values, each value read as YAML reads it; the values are checked with the file they override.

    Args:
        items: the settings, e.g. from ``medclassify run --set``.

    Returns:
        The keys (dashes as underscores) and their values, in the order given.
    """
    known = {f.name for f in fields(TrainConfig)}
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"set {item!r}: expected KEY=VALUE, e.g. epochs=1", parameters=("set",))
        if key not in known:
            raise ConfigError(
                f"set {key}: not a training setting; known keys: {', '.join(sorted(known))}", parameters=("set",)
            )
        try:
            values[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"set {key}={text}: not a YAML value ({first_line(exc)})", parameters=("set",)) from None
    return values


def available_recipes() -> dict[str, Path]:
    """The named recipes shipped in ``recipes/``: name -> YAML file."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def load_recipe(name: str) -> dict:
    """A recipe's TrainConfig keys (dashes as underscores): a packaged recipe's name, or the path of a
    recipe YAML file (e.g. the one ``medclassify tune`` writes); anything else is a :class:`ConfigError`."""
    recipes = available_recipes()
    if name in recipes:
        path = recipes[name]
    elif name.endswith((".yaml", ".yml")):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"recipe {name}: no such recipe file", parameters=("recipe",))
    else:
        raise ConfigError(
            f"recipe: unknown recipe '{name}'; choose one of: {', '.join(recipes)} (or a .yaml file)",
            parameters=("recipe",),
        )
    values = read_yaml_mapping(path, "recipe", "a mapping of TrainConfig keys", {})
    return {k.replace("-", "_"): v for k, v in values.items()}


MAX_DURATION_S = 30 * 24 * 3600.0  # a longer budget is a typing slip, not a plan


def parse_duration(text: str, name: str = "time_budget") -> float:
    """Seconds of a duration such as ``90s``, ``10m``, ``1h30m`` or ``600`` (seconds), from more than
    0 s to 30 days; ``name`` (the option or key) is named in the error of anything else."""
    match = DURATION.fullmatch(str(text).strip().lower())
    if not match or not any(match.groups()):
        raise ConfigError(f"{name}: expected a duration such as 90s, 10m or 1h30m, got {text!r}", parameters=(name,))
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if not 0 < total <= MAX_DURATION_S:
        raise ConfigError(
            f"{name} must be longer than 0 s and at most 30 days (720h), got {text!r}", parameters=(name,)
        )
    return total


def check_seed(value: object, name: str = "seed") -> int:
    """A seed NumPy, PyTorch and Python's random all accept: a whole number from 0 to 2**32 - 1."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{name} must be a whole number from 0 to {MAX_SEED}, got {value!r}", parameters=(name,))
    return value


def flag(field_name: str) -> str:
    """A config field's command-line option: ``positive_class`` -> ``--positive-class``."""
    return "--" + field_name.replace("_", "-")
