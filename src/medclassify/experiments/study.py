"""A study: a grid of datasets x sizes x models x seeds, described in YAML, each cell one run.

```yaml
name: paper
datasets: [bloodmnist, organcmnist]
sizes: [28, 64]
models: [paper-cnn]
seeds: [0]            # or a count: seeds: 3  ->  0, 1, 2
train:                # any TrainConfig field, shared by every experiment
  epochs: 10
experiments:          # optional per-experiment settings, matched on dataset/size/model/seed
  - match: {size: 64}
    train: {batch_size: 64}
```
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import ConfigError
from ..training.config import TrainConfig

GRID_KEYS = ("dataset", "size", "model", "seed")
# Settings a study decides per experiment; the shared ``train`` block may not set them.
RESERVED = set(GRID_KEYS) | {"out", "resume", "quiet"}


@dataclass
class Study:
    name: str
    datasets: list[str]
    sizes: list[int]
    models: list[str] = field(default_factory=lambda: ["paper-cnn"])
    seeds: list[int] = field(default_factory=lambda: [0])
    train: dict = field(default_factory=dict)
    experiments: list[dict] = field(default_factory=list)

    @classmethod
    def from_dict(cls, values: dict, source: str = "study") -> "Study":
        known = {"name", "datasets", "sizes", "models", "seeds", "train", "experiments"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; a study has {', '.join(sorted(known))}")
        for key in ("name", "datasets", "sizes"):
            if key not in values:
                raise ConfigError(f"{source}: '{key}' is required")
        seeds = values.get("seeds", [0])
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            if seeds < 1:
                raise ConfigError(f"{source}: 'seeds' must be a count >= 1 or a list of seeds, got {seeds}")
            seeds = list(range(seeds))
        study = cls(
            name=str(values["name"]),
            datasets=[str(d).lower() for d in _as_list(values["datasets"])],
            sizes=[int(s) for s in _as_list(values["sizes"])],
            models=[str(m) for m in _as_list(values.get("models", ["paper-cnn"]))],
            seeds=[int(s) for s in _as_list(seeds)],
            train=dict(values.get("train") or {}),
            experiments=list(values.get("experiments") or []),
        )
        study.validate(source)
        return study

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Study":
        try:
            values = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the study YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping with name, datasets, sizes, models, seeds, train")
        return cls.from_dict(values, source=str(path))

    def validate(self, source: str = "study") -> None:
        reserved = sorted(RESERVED & {k.replace("-", "_") for k in self.train})
        if reserved:
            raise ConfigError(f"{source}: 'train' may not set {', '.join(reserved)}; the grid and the study folder decide them")
        for i, entry in enumerate(self.experiments):
            if not isinstance(entry, dict) or set(entry) - {"match", "train"}:
                raise ConfigError(f"{source}: experiments[{i}] must be a mapping with 'match' and 'train'")
            bad = sorted(set(entry.get("match") or {}) - set(GRID_KEYS))
            if bad:
                raise ConfigError(f"{source}: experiments[{i}].match may use {', '.join(GRID_KEYS)}, not {', '.join(bad)}")
        for config in self.configs(Path(".")):  # every cell must be a valid run before any starts
            config.validate()

    def configs(self, study_dir: Path, data_dir: str | None = None) -> list[TrainConfig]:
        """One TrainConfig per grid cell, writing into ``study_dir/runs/<experiment>``."""
        configs = []
        for dataset, size, model, seed in itertools.product(self.datasets, self.sizes, self.models, self.seeds):
            cell = {"dataset": dataset, "size": size, "model": model, "seed": seed}
            settings = dict(self.train)
            for entry in self.experiments:
                if all(cell[k] == v for k, v in (entry.get("match") or {}).items()):
                    settings.update(entry.get("train") or {})
            if data_dir:
                settings["data_dir"] = data_dir
            out = study_dir / "runs" / experiment_name(dataset, size, model, seed)
            configs.append(TrainConfig.from_dict({**settings, **cell, "out": str(out), "quiet": True}, source=f"study cell {out.name}"))
        return configs


def experiment_name(dataset: str, size: int, model: str, seed: int) -> str:
    return f"{dataset}_{size}_{model}_seed{seed}"


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
