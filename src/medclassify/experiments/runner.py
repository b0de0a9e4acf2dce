"""Run every experiment of a study, skipping those already complete and resuming interrupted ones."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..training import TrainConfig, train
from .study import Study


@dataclass
class ExperimentStatus:
    config: TrainConfig
    state: str  # "done" (found complete), "trained"

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir()


def is_complete(config: TrainConfig) -> bool:
    return (config.run_dir() / "metrics.json").is_file()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def run_study(study: Study, study_dir: str | Path, data_dir: str | None = None, quiet: bool = False) -> list[ExperimentStatus]:
    """Train the study's experiments one after another into ``study_dir/runs/``.

    A run folder with ``metrics.json`` is complete and skipped; one with only ``last.pt`` was
    interrupted and is resumed, so running the same study again finishes it without redoing work.
    """
    study_dir = Path(study_dir)
    configs = study.configs(study_dir, data_dir)
    pending = [c for c in configs if not is_complete(c)]
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"study '{study.name}': {len(configs)} experiments, {len(configs) - len(pending)} already complete")
    statuses = [ExperimentStatus(c, "done") for c in configs if is_complete(c)]
    started = time.perf_counter()
    for k, config in enumerate(pending, start=1):
        config.resume = (config.run_dir() / "last.pt").is_file()
        log(f"[{k}/{len(pending)}] {config.run_dir().name}" + (" (resuming)" if config.resume else ""))
        train(config)
        statuses.append(ExperimentStatus(config, "trained"))
        elapsed = time.perf_counter() - started
        left = elapsed / k * (len(pending) - k)
        log(f"[{k}/{len(pending)}] done; {_duration(elapsed)} so far, about {_duration(left)} left")
    order = {c.run_dir(): i for i, c in enumerate(configs)}
    return sorted(statuses, key=lambda s: order[s.run_dir])
