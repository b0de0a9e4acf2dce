"""A study: a grid of datasets x sizes x models x seeds, described in YAML, each cell one run.

```yaml
name: paper
datasets: [bloodmnist, organcmnist]
sizes: [28, 64]
models: [paper-cnn]
seeds: [0]            # or a count: seeds: 3  ->  0, 1, 2
train:                # any TrainConfig field, shared by every experiment
  epochs: 10
variants:             # optional: named training settings, one more axis of the grid
  clean: {}
  robust: {augment: medmnistc}
experiments:          # optional per-experiment settings, matched on dataset/size/model/variant/seed
  - match: {size: 64}
    train: {batch_size: 64}
explain:              # optional: measure each experiment's explanations (explain --evaluate) on its
  methods: [gradcam, integrated-gradients]   # first seed's run; default: all seven methods
  images: 200         # class-stratified test images (the default)
```
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ..config import MAX_SEED, TrainConfig, read_yaml_mapping, validation_line
from ..data import FOLDER_NAME
from ..defaults import EVALUATION_IMAGES, EXPLAIN_METHODS, AttributionMethod
from ..errors import ConfigError

GRID_KEYS = ("dataset", "size", "model", "variant", "seed")
# Settings a study decides per experiment; the shared ``train`` block may not set them.
RESERVED = set(GRID_KEYS) | {"out", "resume", "quiet"}
MAX_SEEDS = 1000
MAX_CELLS = 10_000
# The study's name becomes a folder name under runs/: letters, digits, '.', '_' and '-', no path.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
VARIANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.-]{0,39}$"  # part of a run folder's name; '_' separates its parts


NonEmptyNames = Annotated[list[StrictStr], Field(min_length=1, max_length=1000)]
NonEmptySizes = Annotated[list[StrictInt], Field(min_length=1, max_length=1000)]
Seeds = Annotated[list[Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]], Field(min_length=1, max_length=MAX_SEEDS)]


class _Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    match: dict[StrictStr, Any] = {}
    train: dict[StrictStr, Any] = {}


class _Explain(BaseModel):
    model_config = ConfigDict(extra="forbid")
    methods: Annotated[list[AttributionMethod], Field(min_length=1)] = list(EXPLAIN_METHODS)
    images: Annotated[StrictInt, Field(ge=1, le=100_000)] = EVALUATION_IMAGES


class StudySchema(BaseModel):
    """The study YAML's shape and types, checked before anything runs (TrainConfig keys inside
    ``train`` are checked by TrainConfig's own types)."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[StrictStr, Field(pattern=NAME_PATTERN)]
    datasets: NonEmptyNames
    sizes: NonEmptySizes
    models: NonEmptyNames = ["paper-cnn"]
    seeds: Seeds = [0]
    train: dict[StrictStr, Any] = {}
    variants: dict[Annotated[StrictStr, Field(pattern=VARIANT_PATTERN)], dict[StrictStr, Any]] = {}
    experiments: list[_Experiment] = []
    explain: _Explain | None = None


@dataclass
class StudyExplanations:
    """Which explanation methods a study measures (``explain --evaluate``), and on how many test images."""

    methods: list[str] = field(default_factory=lambda: list(EXPLAIN_METHODS))
    images: int = EVALUATION_IMAGES
    seed: int = 0  # the image sample's, as explain --evaluate's default


@dataclass
class Study:
    """A study file: the grid (datasets x sizes x models x seeds) and the TrainConfig keys every run shares."""

    name: str
    datasets: list[str]
    sizes: list[int]
    models: list[str] = field(default_factory=lambda: ["paper-cnn"])
    seeds: list[int] = field(default_factory=lambda: [0])
    train: dict = field(default_factory=dict)
    variants: dict[str, dict] = field(default_factory=dict)  # name -> TrainConfig keys; an axis of the grid
    experiments: list[dict] = field(default_factory=list)
    explain: StudyExplanations | None = None  # measure the explanations of each experiment's first seed

    @classmethod
    def from_dict(cls, values: dict, source: str = "study") -> Study:
        """A study from a mapping, each key checked; a bad value is one :class:`ConfigError` line naming it."""
        known = set(StudySchema.model_fields)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(map(str, unknown))}; a study has {', '.join(sorted(known))}"
            )
        values = dict(values)
        seeds = values.get("seeds")
        if isinstance(seeds, int) and not isinstance(seeds, bool):  # a count: seeds 0 .. N-1
            if not 1 <= seeds <= MAX_SEEDS:
                raise ConfigError(f"{source}: seeds: a count from 1 to {MAX_SEEDS} or a list of seeds, got {seeds}")
            values["seeds"] = list(range(seeds))
        for key in ("datasets", "sizes", "models", "seeds"):  # one value stands for a list of one
            if key in values and not isinstance(values[key], list):
                values[key] = [values[key]]
        try:
            checked = StudySchema.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(validation_line(source, exc)) from None
        study = cls(
            name=checked.name,
            datasets=[d.lower() for d in checked.datasets],
            sizes=checked.sizes,
            models=checked.models,
            seeds=checked.seeds,
            train=dict(checked.train),
            variants={name: dict(settings) for name, settings in checked.variants.items()},
            experiments=[entry.model_dump() for entry in checked.experiments],
            explain=None
            if checked.explain is None
            else StudyExplanations(list(dict.fromkeys(checked.explain.methods)), checked.explain.images),
        )
        study.validate(source)
        return study

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Study:
        """A study from its YAML file (see :meth:`from_dict`); ``overrides`` (TrainConfig keys, e.g.
        ``{"epochs": 1}`` for a smoke test) replace the file's ``train`` settings for every experiment
        and are checked as the file's are."""
        expected = "a mapping with name, datasets, sizes, models, seeds, train"
        values = read_yaml_mapping(path, "study YAML", expected)
        if overrides:
            train = values.get("train")
            values = {**values, "train": {**(train if isinstance(train, dict) else {}), **overrides}}
        return cls.from_dict(values, source=str(path))

    def validate(self, source: str = "study") -> None:
        """Raise :class:`ConfigError` for a grid that is too large, a reserved or unknown key, or a cell that
        is not a valid run (every cell is checked before any starts)."""
        cells = len(self.datasets) * len(self.sizes) * len(self.models) * len(self.seeds)
        if cells > MAX_CELLS:
            raise ConfigError(
                f"{source}: the grid has {cells:,} experiments; at most {MAX_CELLS:,} are run in one study"
            )
        for where, settings in [("train", self.train)] + [(f"variants.{n}", v) for n, v in self.variants.items()]:
            reserved = sorted(RESERVED & {k.replace("-", "_") for k in settings})
            if reserved:
                raise ConfigError(
                    f"{source}: '{where}' may not set {', '.join(reserved)}; the grid and the study folder decide them"
                )
        for i, entry in enumerate(self.experiments):
            if not isinstance(entry, dict) or set(entry) - {"match", "train"}:
                raise ConfigError(f"{source}: experiments[{i}] must be a mapping with 'match' and 'train'")
            bad = sorted(set(entry.get("match") or {}) - set(GRID_KEYS))
            if bad:
                raise ConfigError(
                    f"{source}: experiments[{i}].match may use {', '.join(GRID_KEYS)}, not {', '.join(bad)}"
                )
        for config in self.configs(Path("."), source=source):  # every cell must be a valid run before any starts
            if config.dataset_name != FOLDER_NAME or config.data_dir:  # an image folder may come with run_study
                config.validate()

    def cells(self) -> list[dict]:
        """The grid, in order: one mapping of :data:`GRID_KEYS` per run (``variant`` None without variants)."""
        variants: list[str | None] = [*self.variants] or [None]
        product = itertools.product(self.datasets, self.sizes, self.models, variants, self.seeds)
        return [dict(zip(GRID_KEYS, values, strict=True)) for values in product]

    def configs(self, study_dir: Path, data_dir: str | None = None, source: str = "study") -> list[TrainConfig]:
        """One TrainConfig per grid cell (:meth:`cells`, same order), writing into ``study_dir/runs/<experiment>``."""
        configs = []
        for cell in self.cells():
            settings = {**self.train, **self.variants.get(cell["variant"], {})}
            for entry in self.experiments:
                if all(cell[k] == v for k, v in (entry.get("match") or {}).items()):
                    settings.update(entry.get("train") or {})
            if data_dir:
                settings["data_dir"] = data_dir
            out = study_dir / "runs" / experiment_name(**cell)
            run_cell = {k: cell[k] for k in ("dataset", "size", "model", "seed")}
            configs.append(
                TrainConfig.from_dict(
                    {**settings, **run_cell, "out": str(out), "quiet": True}, source=f"{source}: experiment {out.name}"
                )
            )
        return configs


def experiment_name(dataset: str, size: int, model: str, seed: int, variant: str | None = None) -> str:
    """The run folder's name of one grid cell and seed."""
    return f"{dataset}_{size}_{model}{'_' + variant if variant else ''}_seed{seed}"
