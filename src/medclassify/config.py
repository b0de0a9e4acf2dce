"""``TrainConfig``: one plain object describes a run. The CLI builds its ``train`` options from
these fields, a YAML file fills the same fields, and Python code sets them directly."""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import yaml

from .data import AUGMENT_CHOICES, FOLDER_NAME, NORMALIZE_CHOICES, ORIENTATIONS, STORAGES, get_dataset_info
from .defaults import CONFORMAL_SCORES, CORRUPTION_SETS, TRACKERS
from .errors import ConfigError, first_line

SELECT_METRICS = ("auc", "acc", "f1", "loss")
MIX_CHOICES = ("none", "mixup", "cutmix", "mixup-cutmix")
DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
MAX_SEED = 2**32 - 1


def option(default, help: str, *, choices=None, resumable: bool = False):
    """A field with the help and choices its command-line option shows; ``resumable``: the value may
    change when an interrupted run is resumed."""
    return field(default=default, metadata={"help": help, "choices": choices, "resumable": resumable})


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
    select_metric: str = option("auc", "validation metric that picks the best checkpoint", choices=SELECT_METRICS)
    normalize: str = option(
        "dataset",
        "dataset: per-channel mean/std of the training split; half: (x-0.5)/0.5 as in "
        "MedMNIST's examples; none: [0, 1]",
        choices=NORMALIZE_CHOICES,
    )
    channels: int | None = option(
        None,
        "1 or 3: image folders are converted to this (default: what most images are); grey MedMNIST data can be repeated to 3",
        choices=(1, 3),
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
    augment: str = option(
        "none",
        "batch augmentation: none (the paper), light (flips/rotation/shift as the data allow), exact (flips, "
        "right-angle turns and whole-pixel shifts as the data allow, no resampling: nothing is blurred), strong "
        "(light plus crop scale and intensity jitter), randaug (light, then two random intensity operations per "
        "image, RandAugment-style), medmnistc (exact, then per image one of MedMNIST-C's corruptions for the "
        "dataset, or none, at a random intensity)",
        choices=AUGMENT_CHOICES,
    )
    orientation: str | None = option(
        None,
        "which geometric transforms keep labels true: free, mirror-x or fixed (default: the dataset's metadata; image folders: fixed)",
        choices=ORIENTATIONS,
    )
    optimizer: str = option(
        "adam", "adam (the paper), adamw or sgd (with --momentum)", choices=("adam", "adamw", "sgd")
    )
    weight_decay: float = option(0.0, "weight decay")
    momentum: float = option(0.9, "SGD momentum (Nesterov)")
    schedule: str = option(
        "none", "learning-rate schedule, stepped every batch", choices=("none", "cosine", "onecycle", "step")
    )
    milestones: list[int] | None = option(None, "step schedule: epochs after which the rate is multiplied by --gamma")
    gamma: float = option(0.1, "step schedule: the factor at each milestone")
    warmup_epochs: int = option(0, "epochs of linear learning-rate warm-up")
    class_weights: str = option("none", "balanced: weight the loss by n / (k * n_class)", choices=("none", "balanced"))
    sampler: str = option(
        "shuffle", "shuffle (the paper) or balanced: draw every class equally often", choices=("shuffle", "balanced")
    )
    loss: str = option("ce", "ce (cross-entropy) or focal", choices=("ce", "focal"))
    focal_gamma: float = option(2.0, "focal loss gamma (0 gives cross-entropy)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy targets, as torch.nn.CrossEntropyLoss")
    early_stopping: int = option(0, "stop after this many epochs without improvement of --select-metric (0: off)")
    grad_clip: float = option(0.0, "clip the gradient norm to this value (0: off)")
    ema_decay: float = option(
        0.0,
        "keep an exponential moving average of the weights with this decay per step (e.g. 0.998); it is "
        "validated, checkpointed and tested in place of the raw weights (0: off)",
    )
    mix: str = option(
        "none",
        "mix pairs of training images and their labels: mixup, cutmix, or either per batch (single-label tasks)",
        choices=MIX_CHOICES,
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
    calibrate: str = option(
        "none",
        "temperature: after training, fit a temperature on the validation split and store it in the "
        "bundle (as 'medclassify calibrate RUN')",
        choices=("none", "temperature"),
        resumable=True,
    )
    threshold: str | None = option(
        None,
        "after training, choose the decision threshold on the validation split: youden, "
        "sensitivity=0.95, specificity=0.9 or a probability (binary tasks, or with --positive-class)",
        resumable=True,
    )
    positive_class: str | None = option(
        None, "with --threshold on a multi-class task: the class decided against the rest", resumable=True
    )
    conformal: float | None = option(
        None,
        "after training, calibrate conformal prediction sets on the validation split: 0.1 gives per image a set "
        "of classes that holds the true class of 9 in 10 new images like the validation ones (single-label tasks)",
        resumable=True,
    )
    conformal_score: str = option(
        CONFORMAL_SCORES[0],
        "with --conformal: lac (the smallest sets; empty when no class is likely enough) or aps (the most "
        "probable classes up to a total probability; never empty, so it covers more than asked)",
        choices=CONFORMAL_SCORES,
        resumable=True,
    )
    mondrian: bool = option(
        False,
        "with --conformal: one threshold per class, so that every class (rare ones too) gets the coverage",
        resumable=True,
    )
    robustness: str = option(
        "none",
        "after training, evaluate the test split under corruptions at five severities (as 'medclassify "
        "robustness RUN'): medmnistc (MedMNIST-C's for the dataset), generic, or auto (medmnistc where it has "
        "the dataset)",
        choices=("none", *CORRUPTION_SETS),
        resumable=True,
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
    data_storage: str = option(
        "auto",
        "how the splits are held: memory (read into RAM), mmap (memory-mapped from the split cache: every process "
        "shares one copy), or auto (memory while the copies of the machine's processes total at most 1 GiB, mmap above)",
        choices=STORAGES,
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps (auto: CUDA, then MPS, then CPU)")
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
    track: list[str] | None = option(
        None,
        "report the run to experiment trackers as it trains: tensorboard (RUN/tensorboard) and/or mlflow "
        "(MLFLOW_TRACKING_URI, default mlruns/ here); needs pip install 'medclassify[tracking]'",
        choices=TRACKERS,
    )
    mlflow_parent: str | None = option(None, "with --track mlflow: log as a child of this MLflow run (studies set it)")


@dataclass
class TrainConfig(RuntimeConfig, RunConfig):
    """A run as the CLI, a YAML file and Python fill it: one flat set of keys, the fields of
    :class:`RunConfig` and :class:`RuntimeConfig`."""

    # ---- filling ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        """Fill the fields from a mapping; a ``recipe`` key first fills them from that recipe."""
        known = {f.name for f in fields(cls)}
        keys = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        if keys.get("recipe"):
            if not isinstance(keys["recipe"], str):
                raise ConfigError(f"{source}: recipe: expected a recipe name, got {keys['recipe']!r}")
            keys = {**load_recipe(keys["recipe"]), **keys}
        return checked_config(keys, source)

    @classmethod
    def from_recipe(cls, name: str, **overrides) -> TrainConfig:
        """A named recipe with some fields overridden, e.g. ``from_recipe("paper-bn-aug", dataset="bloodmnist")``."""
        return cls.from_dict({**overrides, "recipe": name})

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Fill the fields from a YAML mapping of TrainConfig keys; a bad file is one :class:`ConfigError` line."""
        return cls.from_dict(read_yaml_mapping(path, "YAML config", "a mapping of TrainConfig keys", {}), str(path))

    def to_dict(self) -> dict:
        return asdict(self)

    def fixed_settings(self) -> dict:
        """The :class:`RunConfig` values a resumed run must share with the run it continues."""
        return {f.name: getattr(self, f.name) for f in fields(RunConfig) if not f.metadata["resumable"]}

    # ---- derived values ----------------------------------------------------------------------
    @property
    def dataset_name(self) -> str:
        """The dataset in lower case; 'folder' when only --data-dir (with a train/ folder) is given."""
        if self.dataset:
            return self.dataset.lower()
        if self.data_dir and (Path(self.data_dir).expanduser() / "train").is_dir():
            return FOLDER_NAME
        raise ConfigError("--dataset is required (or give --data-dir a folder that holds train/<class>/ images)")

    def run_dir(self) -> Path:
        """The run folder: --out, or runs/DATASET_SIZE_MODEL_seedSEED."""
        if self.out:
            return Path(self.out).expanduser()
        name = self.dataset_name
        if name == FOLDER_NAME:  # the image folder's own name, so that two folders do not share a run
            name = Path(self.data_dir).expanduser().resolve().name or FOLDER_NAME
        return Path("runs") / f"{name}_{self.size}_{self.model}_seed{self.seed}"

    # ---- checking ----------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the option for any impossible value."""
        if self.recipe:
            load_recipe(self.recipe)  # an unknown name fails here, naming the choices
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
        from .models import available_models  # torch: only when a config is checked, not for --help

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
            if (
                choices
                and value is not None
                and any(v not in choices for v in (value if isinstance(value, list) else [value]))
            ):
                raise ConfigError(f"{flag(f.name)} must be one of {', '.join(map(str, choices))}, got {value!r}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        for key in ("weight_decay", "focal_gamma", "grad_clip", "momentum"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{flag(key)} must be a number >= 0, got {value!r}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"--ema-decay must be in [0, 1), got {self.ema_decay!r}")
        if not (isinstance(self.mix_alpha, (int, float)) and math.isfinite(self.mix_alpha) and self.mix_alpha > 0):
            raise ConfigError(f"--mix-alpha must be a number > 0, got {self.mix_alpha!r}")
        if self.mix != "none" and self.loss == "focal":
            raise ConfigError("--mix needs the cross-entropy loss (mixed targets are soft); drop --loss focal")
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"--gamma must be in (0, 1], got {self.gamma!r}")
        for key in ("warmup_epochs", "early_stopping"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{flag(key)} must be a whole number >= 0, got {value!r}")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"--warmup-epochs {self.warmup_epochs} must be fewer than --epochs {self.epochs}")
        if self.schedule == "step" and not self.milestones:
            raise ConfigError("--schedule step needs --milestones, e.g. --milestones 5 8")
        if self.milestones and any(not isinstance(m, int) or not 0 < m < self.epochs for m in self.milestones):
            raise ConfigError(f"--milestones must be epochs between 1 and {self.epochs - 1}, got {self.milestones}")
        if self.unfreeze_after is not None and (not self.freeze_backbone or not 0 < self.unfreeze_after < self.epochs):
            raise ConfigError(f"--unfreeze-after needs --freeze-backbone and a value between 1 and {self.epochs - 1}")
        check_seed(self.seed)
        if self.threshold is not None:
            from .evaluation.threshold import parse_rule

            parse_rule(self.threshold)
        elif self.positive_class is not None:
            raise ConfigError("--positive-class needs --threshold RULE (it names the class the threshold decides)")
        if self.conformal is not None:
            from .evaluation.conformal import check_level

            check_level(self.conformal)
        elif self.mondrian or self.conformal_score != CONFORMAL_SCORES[0]:
            given = "--mondrian" if self.mondrian else f"--conformal-score {self.conformal_score}"
            raise ConfigError(f"{given} needs --conformal LEVEL (the prediction sets it shapes)")
        for tracker in self.track or []:  # the module is named after the tracker
            if not _importable(tracker):
                raise ConfigError(f"--track {tracker} needs the {tracker} package: pip install 'medclassify[tracking]'")
        if self.pretrained and not available_models()[self.model].pretrained:
            with_weights = [n for n, e in available_models().items() if e.pretrained]
            raise ConfigError(
                f"--pretrained: model '{self.model}' has no ImageNet weights; models with weights: {', '.join(with_weights)}"
            )
        return self


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError, AttributeError):  # e.g. a module set to None in sys.modules
        return False


@lru_cache(maxsize=1)
def _config_adapter():
    import pydantic

    return pydantic.TypeAdapter(TrainConfig)


def validation_line(source: str, exc) -> str:
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


def read_yaml_mapping(path: str | Path, what: str, expected: str, empty=None) -> dict:
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
            raise ConfigError(f"--recipe {name}: no such recipe file")
    else:
        raise ConfigError(f"--recipe: unknown recipe '{name}'; choose one of: {', '.join(recipes)} (or a .yaml file)")
    values = read_yaml_mapping(path, "recipe", "a mapping of TrainConfig keys", {})
    return {k.replace("-", "_"): v for k, v in values.items()}


MAX_DURATION_S = 30 * 24 * 3600.0  # a longer budget is a typing slip, not a plan


def parse_duration(text: str, name: str = "--time-budget") -> float:
    """Seconds of a duration such as ``90s``, ``10m``, ``1h30m`` or ``600`` (seconds), from more than
    0 s to 30 days; ``name`` (the option or key) is named in the error of anything else."""
    match = DURATION.fullmatch(str(text).strip().lower())
    if not match or not any(match.groups()):
        raise ConfigError(f"{name}: expected a duration such as 90s, 10m or 1h30m, got {text!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if not 0 < total <= MAX_DURATION_S:
        raise ConfigError(f"{name} must be longer than 0 s and at most 30 days (720h), got {text!r}")
    return total


def check_seed(value, name: str = "--seed") -> int:
    """A seed NumPy, PyTorch and Python's random all accept: a whole number from 0 to 2**32 - 1."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{name} must be a whole number from 0 to {MAX_SEED}, got {value!r}")
    return value


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")
