"""Hyper-parameter search with Optuna: a search space over TrainConfig fields in YAML, trials that
are ordinary run folders, pruning after each epoch, and a search that resumes where it stopped.

```yaml
name: blood-search
base: {dataset: bloodmnist, model: bn-cnn, epochs: 4}   # any TrainConfig keys (a recipe too)
space:
  lr: {low: 1.0e-4, high: 1.0e-2, log: true}
  weight_decay: {low: 0.0, high: 1.0e-3}
  batch_size: {choices: [32, 64, 128]}
  augment: {choices: [none, exact]}
metric: val_auc       # val_acc, val_auc, val_f1 (maximised) or val_loss (minimised): validation only
trials: 12            # and/or timeout: 30m
pruner: median        # median, asha or none
seed: 0               # the sampler's seed (TPE)
```

The study's state lives in ``TUNE/optuna.db`` (SQLite), so running the command again continues the
search: finished and pruned trials are kept, a trial cut off by the interruption is tried again, and
the budget counts what was already done. Each trial trains into ``TUNE/trials/trial_NNN``. When the
budget is spent, the best configuration is written as ``TUNE/best.yaml`` (a recipe: ``--recipe
TUNE/best.yaml``), retrained once into ``TUNE/best_trial_NNN`` (NNN: the best trial; a longer search
that finds a better one retrains that one) and tested there: the only test figures the search reports.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from ..config import MAX_SEED, TrainConfig, parse_duration, read_yaml_mapping, validation_line
from ..errors import ConfigError, MedclassifyError
from ..evaluation.figures import save_figure
from ..io import atomic_path, folder_lock, make_folder, write_csv
from ..training import train
from .runner import STUDY_BACKENDS, check_ray_address, ray_session
from .study import NAME_PATTERN

logger = logging.getLogger(__name__)

METRICS = {"val_acc": "maximize", "val_auc": "maximize", "val_f1": "maximize", "val_loss": "minimize"}
SELECT = {"val_acc": "acc", "val_auc": "auc", "val_f1": "f1", "val_loss": "loss"}
# Keys a search decides itself, or that are about the data and not the recipe it writes.
NOT_SEARCHABLE = {"out", "resume", "quiet", "track", "mlflow_parent"}
NOT_IN_RECIPE = {"dataset", "size", "data_dir", "out", "resume", "quiet", "seed", "track", "mlflow_parent", "download"}
INSTALL = "pip install 'medclassify[tune]'"


class Dimension(BaseModel):
    """One searched field: ``choices``, or a range ``low``..``high`` (``log``: sampled on a log scale;
    ``step``: a grid; integers when both ends are integers)."""

    model_config = ConfigDict(extra="forbid")
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give either a non-empty 'choices' list or 'low' and 'high'")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("a range needs 'low' < 'high'")
        elif self.log and self.low <= 0:
            raise ValueError("a log range needs 'low' > 0")
        elif self.step is not None and not (self.step > 0 and self.step <= self.high - self.low):
            raise ValueError("'step' must be > 0 and at most 'high' - 'low'")
        return self

    def integer(self) -> bool:
        """Whether a range (not a list of choices) holds whole numbers only."""
        return all(float(value or 0).is_integer() for value in (self.low, self.high, self.step or 1))


class SearchSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[StrictStr, Field(pattern=NAME_PATTERN)]
    base: dict[StrictStr, Any] = {}
    space: Annotated[dict[StrictStr, Dimension], Field(min_length=1)]
    metric: Literal["val_acc", "val_auc", "val_f1", "val_loss"] = "val_auc"
    trials: Annotated[int, Field(ge=1, le=10_000)] | None = 12
    timeout: StrictStr | None = None
    pruner: Literal["median", "asha", "none"] = "median"
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0


@dataclass
class Search:
    """A search file, checked: every field in ``space`` is a TrainConfig key and ``base`` a valid run."""

    name: str
    base: dict
    space: dict[str, Dimension]
    metric: str
    trials: int | None
    timeout: float | None
    pruner: str
    seed: int

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Search:
        """A search from its YAML file; ``overrides`` (TrainConfig keys, e.g. ``{"epochs": 2}``) replace
        its ``base`` settings, and may not set what its ``space`` searches."""
        values = read_yaml_mapping(path, "search YAML", "a mapping with name, base, space, metric, trials")
        if overrides:
            space, base = (values.get(key) for key in ("space", "base"))
            searched = sorted(
                k for k in overrides if isinstance(space, dict) and k in {s.replace("-", "_") for s in space}
            )
            if searched:
                raise ConfigError(f"{path}: the space searches {', '.join(searched)}; set other keys only")
            values = {**values, "base": {**(base if isinstance(base, dict) else {}), **overrides}}
        try:
            checked = SearchSchema.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(validation_line(str(path), exc)) from None
        if checked.trials is None and checked.timeout is None:
            raise ConfigError(f"{path}: give a budget: trials, timeout or both")
        known = set(TrainConfig.__dataclass_fields__)
        bad = sorted(k for k in checked.space if k.replace("-", "_") not in known - NOT_SEARCHABLE)
        if bad:
            raise ConfigError(f"{path}: space: {', '.join(bad)} cannot be searched; use TrainConfig keys")
        search = cls(
            checked.name,
            {k.replace("-", "_"): v for k, v in checked.base.items()},
            {k.replace("-", "_"): v for k, v in checked.space.items()},
            checked.metric,
            checked.trials,
            parse_duration(checked.timeout, f"{path}: timeout") if checked.timeout else None,
            checked.pruner,
            checked.seed,
        )
        TrainConfig.from_dict(search.base, source=f"{path}: base").validate()
        return search


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"tune needs Optuna: {INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed and interrupted trials: trials.csv says why
    return optuna


def _suggest(trial, name: str, dimension: Dimension):
    if dimension.choices is not None:
        return trial.suggest_categorical(name, dimension.choices)
    low, high = dimension.low, dimension.high
    assert low is not None and high is not None  # a range has both; the search file's check made sure
    if dimension.integer():
        return trial.suggest_int(name, int(low), int(high), step=int(dimension.step or 1), log=dimension.log)
    return trial.suggest_float(name, low, high, step=dimension.step, log=dimension.log)


def _study(search: Search, tune_dir: Path):
    optuna = _optuna()
    pruner = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "asha": optuna.pruners.SuccessiveHalvingPruner(),
        "none": optuna.pruners.NopPruner(),
    }[search.pruner]
    return optuna.create_study(
        study_name=search.name,
        storage=f"sqlite:///{tune_dir.resolve() / 'optuna.db'}",
        sampler=optuna.samplers.TPESampler(seed=search.seed),
        pruner=pruner,
        direction=METRICS[search.metric],
        load_if_exists=True,
    )


def _objective(search: Search, tune_dir: Path, data_dir: str | None):
    optuna = _optuna()

    def objective(trial) -> float:
        values = {name: _suggest(trial, name, dimension) for name, dimension in search.space.items()}
        settings = _trial_settings(search, tune_dir, data_dir, trial.number, values)
        trial.set_user_attr("run_dir", settings["out"])
        try:
            config = TrainConfig.from_dict(settings, source=f"trial {trial.number}").validate()
        except ConfigError as exc:  # an impossible combination (e.g. warm-up longer than the epochs)
            trial.set_user_attr("error", str(exc))
            raise

        def report(row: dict) -> None:
            trial.report(float(row[search.metric]), int(row["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            result = train(config, on_epoch=report)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        scores = [float(row[search.metric]) for row in result.history]
        return min(scores) if METRICS[search.metric] == "minimize" else max(scores)

    return objective


def _definition(search: Search) -> dict:
    """What a search's trials are compared under: a resumed search must keep it."""
    return {
        "metric": search.metric,
        "direction": METRICS[search.metric],
        "space": {name: dimension.model_dump() for name, dimension in search.space.items()},
    }


def _check_same_search(study, search: Search, tune_dir: Path) -> None:
    """The first run of a search records its metric, direction and space in the study; a later run
    with another of them would mix incomparable trials, so it is refused, naming what changed."""
    recorded = study.user_attrs.get("definition")
    now = _definition(search)
    if recorded is None:
        study.set_user_attr("definition", now)
        return
    changes = []
    if recorded["metric"] != now["metric"]:
        changes.append(f"metric {recorded['metric']} ({recorded['direction']}) -> {now['metric']} ({now['direction']})")
    for name in sorted(set(recorded["space"]) | set(now["space"])):
        was, is_now = recorded["space"].get(name), now["space"].get(name)
        if was != is_now:
            changes.append(f"space.{name} {_dimension_text(was)} -> {_dimension_text(is_now)}")
    if changes:
        raise ConfigError(
            f"{tune_dir}: this search was started under other settings ({'; '.join(changes)}); restore them to continue "
            "it, or start a new search with another --out"
        )


def _dimension_text(dimension: dict | None) -> str:
    if dimension is None:
        return "(absent)"
    if dimension["choices"] is not None:
        return str(dimension["choices"])
    step = f" step {dimension['step']:g}" if dimension["step"] is not None else ""
    return f"{dimension['low']:g}..{dimension['high']:g}{' log' if dimension['log'] else ''}{step}"


def _remaining(study, search: Search) -> int | None:
    optuna = _optuna()
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    return None if search.trials is None else max(0, search.trials - len(done))


def _requeue_interrupted(study) -> int:
    """Trials an interruption cut off (Ctrl-C: failed and marked ``interrupted``; a killed process:
    left running, failed here) get their parameters queued again, once."""
    states = _optuna().trial.TrialState
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    cut = [
        t
        for t in study.trials
        if (t.state == states.RUNNING or (t.state == states.FAIL and t.user_attrs.get("interrupted")))
        and t.number not in retried
    ]
    for trial in cut:
        if trial.state == states.RUNNING:
            study.tell(trial.number, state=states.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return len(cut)


def _optimize(search: Search, tune_dir: Path, data_dir: str | None, n_trials: int | None, timeout: float | None):
    study = _study(search, tune_dir)
    study.optimize(_objective(search, tune_dir, data_dir), n_trials=n_trials, timeout=timeout, catch=(ConfigError,))


def _optimize_in_worker(search, tune_dir, data_dir, n_trials, timeout, threads) -> None:
    import torch

    torch.set_num_threads(threads)
    _optimize(search, tune_dir, data_dir, n_trials, timeout)


def _trial_settings(search: Search, tune_dir: Path, data_dir: str | None, number: int, values: dict) -> dict:
    """The TrainConfig keys of trial ``number``: the base, the proposed ``values``, its folder."""
    out = tune_dir / "trials" / f"trial_{number:03d}"
    settings = {**search.base, **values, "select_metric": SELECT[search.metric], "out": str(out), "quiet": True}
    return {**settings, "data_dir": data_dir} if data_dir else settings


def _ray_study_searcher(search: Search, tune_dir: Path, data_dir: str | None):
    """A Ray Tune searcher that asks the search's own Optuna study (TPE, ``TUNE/optuna.db``) for each
    trial and tells it every epoch's figure and the outcome, so that the trials, their states and a
    later resumption are those of the local backend; Ray Tune runs the trials and its scheduler stops
    the bad ones (recorded as pruned)."""
    from ray.tune.search import Searcher

    states = _optuna().trial.TrialState

    class StudySearcher(Searcher):
        def __init__(self):
            super().__init__()
            self.study = _study(search, tune_dir)
            self.running: dict[str, tuple] = {}  # Ray trial id -> (Optuna trial, its figures so far)

        def suggest(self, trial_id: str):
            while True:  # an impossible combination fails at once, as locally, and the next is asked
                trial = self.study.ask()
                values = {name: _suggest(trial, name, dimension) for name, dimension in search.space.items()}
                settings = _trial_settings(search, tune_dir, data_dir, trial.number, values)
                trial.set_user_attr("run_dir", settings["out"])
                try:
                    TrainConfig.from_dict(settings, source=f"trial {trial.number}").validate()
                except ConfigError as exc:
                    trial.set_user_attr("error", str(exc))
                    self.study.tell(trial, state=states.FAIL)
                    continue
                self.running[trial_id] = (trial, [])
                return {"number": trial.number, "values": values}

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if not result.get("finished"):
                trial, figures = self.running[trial_id]
                figures.append(float(result[search.metric]))
                trial.report(figures[-1], int(result["epoch"]))

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            trial, figures = self.running.pop(trial_id)
            if error or not figures:
                self.study.tell(trial, state=states.FAIL)
            elif not (result or {}).get("finished"):  # stopped by the scheduler after some epochs
                self.study.tell(trial, state=states.PRUNED)
            else:
                self.study.tell(trial, min(figures) if METRICS[search.metric] == "minimize" else max(figures))

    return StudySearcher()


def _ray_trial(search: Search, tune_dir: Path, data_dir: str | None, threads: int, cwd: str, proposal: dict) -> None:
    """One trial on a Ray worker: a normal run folder, every epoch's validation figure reported to Tune."""
    import torch
    from ray import tune

    os.chdir(cwd)  # Tune starts a trial in a folder of its own; the search's relative paths are the user's
    torch.set_num_threads(threads)
    settings = _trial_settings(search, tune_dir, data_dir, proposal["number"], proposal["values"])
    config = TrainConfig.from_dict(settings, source=f"trial {proposal['number']}").validate()
    result = train(
        config, on_epoch=lambda row: tune.report({search.metric: float(row[search.metric]), "epoch": int(row["epoch"])})
    )
    # trained to the end (not stopped by the scheduler): the searcher records it as complete
    last = result.history[-1]
    tune.report({search.metric: float(last[search.metric]), "epoch": int(last["epoch"]), "finished": True})


def _tune_on_ray(search: Search, tune_dir: Path, data_dir, remaining: int | None, workers: int, address) -> None:
    """Run the remaining trials with Ray Tune (``workers`` at a time, each with its share of the
    cluster's CPUs), pruned by Ray's median-stopping rule or ASHA after each epoch."""
    try:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
    except ImportError:
        raise ConfigError(
            "backend ray needs Ray Tune: pip install 'medclassify[ray]'", parameters=("backend",)
        ) from None
    with ray_session(address) as ray:
        threads = max(1, int(ray.cluster_resources().get("CPU", 1.0) // workers))
        epochs = TrainConfig.from_dict(search.base).epochs
        scheduler = {
            "median": MedianStoppingRule(time_attr="epoch", grace_period=1, min_samples_required=2),
            "asha": ASHAScheduler(time_attr="epoch", max_t=max(epochs, 2), grace_period=1),
            "none": FIFOScheduler(),
        }[search.pruner]
        trial = partial(_ray_trial, search, tune_dir.resolve(), data_dir, threads, os.getcwd())
        trainable = tune.with_resources(trial, {"cpu": threads})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_ray_study_searcher(search, tune_dir.resolve(), data_dir),
                scheduler=scheduler,
                metric=search.metric,
                mode="min" if METRICS[search.metric] == "minimize" else "max",
                num_samples=-1 if remaining is None else remaining,
                max_concurrent_trials=workers,
                time_budget_s=search.timeout,
                reuse_actors=True,  # a trial's process serves the next: torch is imported once per worker
            ),
            run_config=tune.RunConfig(storage_path=str((tune_dir / "ray").resolve()), name=search.name, verbose=0),
        )
        tuner.fit()


@dataclass
class SearchResult:
    tune_dir: Path
    trials: int
    complete: int
    pruned: int
    failed: int
    best_value: float | None
    best_params: dict
    best_trial: int | None
    seconds: float  # this session's trials
    trial_seconds: float  # every trial's training, over all sessions
    test: dict | None  # the retrained best configuration's test figures
    files: list[Path]


def run_search(
    search: Search,
    tune_dir: str | Path,
    data_dir: str | None = None,
    workers: int = 1,
    retrain: bool = True,
    quiet: bool = False,
    backend: str = "local",
    address: str | None = None,
) -> SearchResult:
    """Run (or continue) ``search`` into ``tune_dir``: ``workers`` processes share the Optuna storage
    and the cores (``backend="ray"``: Ray Tune runs ``workers`` trials at a time on the cluster at
    ``address``, proposed by the same Optuna study). Writes ``trials.csv``,
    the optimisation-history and importance plots, ``best.yaml`` and, with ``retrain``, ``best_trial_NNN``
    and ``report.md``."""
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}", parameters=("workers",))
    if backend not in STUDY_BACKENDS:
        raise ConfigError(f"backend {backend}: expected one of {', '.join(STUDY_BACKENDS)}", parameters=("backend",))
    if backend == "ray":
        check_ray_address(address)  # before the search folder is made
    tune_dir = Path(tune_dir)
    if tune_dir.exists() and not tune_dir.is_dir():
        raise ConfigError(f"{tune_dir}: is a file; a search writes a folder")
    if (tune_dir / "runs").is_dir() and not (tune_dir / "optuna.db").is_file():
        raise ConfigError(f"{tune_dir}: holds a study, not a search; choose another folder")
    make_folder(tune_dir)
    with folder_lock(tune_dir, "tune"):  # a second search on this folder would re-queue this one's trials
        return _run_held_search(search, tune_dir, data_dir, workers, retrain, quiet, backend, address)


def _run_held_search(
    search: Search, tune_dir: Path, data_dir, workers: int, retrain: bool, quiet: bool, backend: str, address
) -> SearchResult:
    started = time.perf_counter()
    study = _study(search, tune_dir)
    _check_same_search(study, search, tune_dir)
    requeued = _requeue_interrupted(study)
    remaining = _remaining(study, search)
    if not quiet:
        logger.info(
            f"search '{search.name}': {len(study.trials) - requeued} trial(s) on record"
            + (f", {requeued} interrupted one(s) queued again" if requeued else "")
            + (f", {remaining} to run" if remaining is not None else "")
        )
    if remaining != 0:
        shares = _shares(remaining, workers)
        if backend == "ray":
            _tune_on_ray(search, tune_dir, data_dir, remaining, workers, address)
        elif workers == 1:
            _optimize(search, tune_dir, data_dir, remaining, search.timeout)
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [
                    pool.submit(_optimize_in_worker, search, tune_dir, data_dir, n, search.timeout, threads)
                    for n in shares
                    if n != 0
                ]
                for future in futures:
                    future.result()
    study = _study(search, tune_dir)
    result = _write_outputs(search, study, tune_dir, data_dir, retrain, time.perf_counter() - started)
    if result.trials and result.failed == result.trials:
        first = min((t for t in study.trials if t.state.name == "FAIL"), key=lambda t: t.number)
        raise MedclassifyError(
            f"every trial of the search failed ({result.failed}); the first (trial {first.number}): {_note(first)} "
            f"- see {tune_dir / 'trials.csv'}"
        )
    return result


def _shares(remaining: int | None, workers: int) -> list[int | None]:
    """Each worker's number of trials (None: until the timeout)."""
    if remaining is None:
        return [None] * workers
    return [remaining // workers + (i < remaining % workers) for i in range(workers)]


def _write_outputs(search, study, tune_dir: Path, data_dir, retrain: bool, seconds: float) -> SearchResult:
    optuna = _optuna()
    states = optuna.trial.TrialState
    trials = [t for t in study.trials if t.state != states.RUNNING]
    names = list(search.space)
    write_csv(
        tune_dir / "trials.csv",
        ["number", "state", search.metric, *names, "epochs_run", "seconds", "run_dir", "note"],
        (
            [
                t.number,
                t.state.name.lower(),
                "" if t.value is None else f"{t.value:.6g}",
                *(t.params.get(n, "") for n in names),
                len(t.intermediate_values),
                f"{(t.datetime_complete - t.datetime_start).total_seconds():.1f}" if t.datetime_complete else "",
                t.user_attrs.get("run_dir", ""),
                _note(t),
            ]
            for t in trials
        ),
    )
    files = [tune_dir / "trials.csv"]
    complete = [t for t in trials if t.state == states.COMPLETE]
    best = study.best_trial if complete else None
    files += _plots(study, tune_dir, len(complete))
    test = None
    if best is not None:
        recipe = {k: v for k, v in {**search.base, **best.params}.items() if k not in NOT_IN_RECIPE}
        recipe["select_metric"] = SELECT[search.metric]
        with atomic_path(tune_dir / "best.yaml") as tmp:
            tmp.write_text(
                f"# medclassify tune: best of {len(complete)} complete trial(s) of '{search.name}' "
                f"({search.metric} {best.value:.4f}, trial {best.number})\n" + yaml.safe_dump(recipe, sort_keys=False)
            )
        files.append(tune_dir / "best.yaml")
        if retrain:
            test = _retrain(search, tune_dir, data_dir, best.number)
            files.append(_report(search, trials, best, test, tune_dir, seconds))
    return SearchResult(
        tune_dir,
        len(trials),
        len(complete),
        sum(t.state == states.PRUNED for t in trials),
        sum(t.state == states.FAIL for t in trials),
        best.value if best else None,
        dict(best.params) if best else {},
        best.number if best else None,
        seconds,
        _trial_seconds(trials),
        test,
        files,
    )


def _trial_seconds(trials) -> float:
    return sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials if t.datetime_complete)


def _note(trial) -> str:
    if "error" in trial.user_attrs:
        return trial.user_attrs["error"]
    if "retry_of" in trial.user_attrs:
        return f"retry of interrupted trial {trial.user_attrs['retry_of']}"
    return "interrupted" if trial.state.name == "FAIL" else ""


def _plots(study: Any, tune_dir: Path, complete: int) -> list[Path]:
    import warnings

    import matplotlib.pyplot as plt  # Optuna draws its plots with pyplot; each is closed once saved
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    plots: list[tuple[str, Callable[[Any], Any]]] = [("optimization_history", optuna_plots.plot_optimization_history)]
    if complete >= 2 and len(study.best_trial.params) > 1:
        plots.append(("param_importances", optuna_plots.plot_param_importances))
    for name, plot in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            axes = plot(study)
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        written += save_figure(figure, tune_dir / name, formats=("png",))
        plt.close(figure)
    return written


def _retrain(search: Search, tune_dir: Path, data_dir: str | None, trial: int) -> dict:
    """The best recipe (of trial ``trial``) trained once more from scratch on the search's data, and
    tested; a finished retraining of the same trial is read back instead."""
    out = tune_dir / f"best_trial_{trial:03d}"
    data = {k: v for k, v in search.base.items() if k in NOT_IN_RECIPE}
    settings = {**data, "recipe": str(tune_dir / "best.yaml"), "out": str(out), "quiet": True}
    if data_dir:
        settings["data_dir"] = data_dir
    config = TrainConfig.from_dict(settings, source=str(tune_dir / "best.yaml"))
    if (out / "metrics.json").is_file():
        import json

        return json.loads((out / "metrics.json").read_text())["test"]
    config.resume = (out / "last.pt").is_file()
    return dict(train(config).metrics["test"])


def _report(search: Search, trials, best, test: dict, tune_dir: Path, seconds: float) -> Path:
    counts = {state: sum(t.state.name.lower() == state for t in trials) for state in ("complete", "pruned", "fail")}
    space = "; ".join(
        f"{name} in {d.choices}"
        if d.choices is not None
        else f"{name} {d.low:g}..{d.high:g}{' (log)' if d.log else ''}"
        for name, d in search.space.items()
    )
    lines = [
        f"# Hyper-parameter search '{search.name}'",
        "",
        f"{len(trials)} trial(s): {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed; "
        f"Optuna TPE (seed {search.seed}), {search.pruner} pruning; {_trial_seconds(trials):.0f} s of trials in all "
        f"({seconds:.0f} s in the last session).",
        f"Space: {space}. Base: {', '.join(f'{k}={v}' for k, v in search.base.items())}.",
        "",
        f"Best trial {best.number}: validation {search.metric} {best.value:.4f} with "
        + ", ".join(f"{k}={v}" for k, v in best.params.items())
        + ". Recipe: `best.yaml` (`medclassify train --recipe best.yaml ...`).",
        "",
        f"Retrained once from scratch (`best_trial_{best.number:03d}/`), test split ({test['n']} images): ACC {test['acc']:.4f}, "
        f"macro-AUC {test['auc']:.4f}, macro-F1 {test['f1_macro']:.4f}.",
        "",
        f"Trials were compared on validation {search.metric} alone. Their run folders also hold test figures "
        "(every run writes them), which the search never read; the test figures above come from the retrained "
        "best configuration only.",
        "",
        "![Optimisation history](optimization_history.png)",
    ]
    if (tune_dir / "param_importances.png").is_file():
        lines += ["", "![Parameter importances](param_importances.png)"]
    path = tune_dir / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def summary(result: SearchResult, metric: str) -> str:
    """One paragraph from a search's result."""
    text = (
        f"{result.trials} trial(s) ({result.complete} complete, {result.pruned} pruned, {result.failed} failed), "
        f"{result.trial_seconds:.0f} s of trials in all ({result.seconds:.0f} s in this session)"
    )
    if result.best_value is not None and not math.isnan(result.best_value):
        text += f"; best: trial {result.best_trial}, validation {metric} {result.best_value:.4f} with " + ", ".join(
            f"{k}={v}" for k, v in result.best_params.items()
        )
    if result.test:
        text += (
            f"; retrained best, test ACC {result.test['acc']:.4f}, AUC {result.test['auc']:.4f}, "
            f"macro-F1 {result.test['f1_macro']:.4f}"
        )
    return text
