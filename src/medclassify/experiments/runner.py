"""Run every experiment of a study, skipping those already complete and resuming interrupted ones,
one after another or in parallel worker processes that share the machine's cores."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..data import FOLDER_NAME
from ..errors import ConfigError, DataError, first_line
from ..io import CONNECT_SECONDS, connection_refused
from ..runs import RunDir
from ..tasks import Task
from ..training import train
from ..training.tracking import finish_study_run, study_run
from .study import Study, StudyExplanations

logger = logging.getLogger(__name__)


@dataclass
class ExperimentStatus:
    """One seed's run of a study, and whether it was found complete or trained now."""

    config: TrainConfig
    state: str  # "done" (found complete) or "trained"

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir()


def is_complete(config: TrainConfig) -> bool:
    return RunDir(config.run_dir()).is_finished()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def missing_data_files(configs: list[TrainConfig]) -> list[str]:
    """Every MedMNIST file the study needs that is not on disk and cannot be downloaded."""
    from ..data import default_data_dir, get_dataset_info
    from ..data.npz import locate

    missing, seen = [], set()
    for config in configs:
        if config.dataset_name == "folder" or (config.dataset_name, config.size) in seen:
            continue
        seen.add((config.dataset_name, config.size))
        info = get_dataset_info(config.dataset_name)
        if info.synthetic:
            continue
        folder = Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()
        try:
            locate(info, config.size, folder, download_missing=config.download)
        except DataError:
            missing.append(f"{info.filename(config.size)} from {info.url(config.size)} into {folder}")
    return missing


def _train_in_worker(config: TrainConfig) -> tuple[TrainConfig, float]:
    """Train one experiment; the config and how many seconds it took."""
    started = time.perf_counter()
    train(config)
    return config, time.perf_counter() - started


def seconds_left(done: list[tuple[TrainConfig, float]], left: list[TrainConfig], workers: int = 1) -> float:
    """How long the experiments ``left`` should take, ``workers`` at a time: each as long as the
    finished ones of its model and size took on average, else those of its model, else all finished
    ones (a slow model last is not estimated from the fast ones before it)."""

    def mean(times: list[float]) -> float | None:
        return sum(times) / len(times) if times else None

    total = 0.0
    for config in left:
        same_cell = [t for c, t in done if (c.model, c.size) == (config.model, config.size)]
        same_model = [t for c, t in done if c.model == config.model]
        total += mean(same_cell) or mean(same_model) or mean([t for _, t in done]) or 0.0
    return total / max(1, min(workers, len(left)))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


STUDY_BACKENDS = ("local", "ray")


def run_study(
    study: Study,
    study_dir: str | Path,
    data_dir: str | None = None,
    quiet: bool = False,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
) -> list[ExperimentStatus]:
    """Train the study's experiments into ``study_dir/runs/``.

    A run folder with ``metrics.json`` is complete and skipped; one with only ``last.pt`` was
    interrupted and is resumed, so running the same study again finishes it without redoing work.
    With ``workers`` > 1, experiments run in that many processes, each with its share of the cores;
    every experiment is seeded on its own, so the numbers equal those of a sequential run. With
    ``backend="ray"`` they are Ray tasks instead, on the cluster at ``address`` (default: a Ray
    instance started on this machine), ``workers`` at a time. A study with ``explain`` settings then
    measures the explanations of each experiment's first-seed run (:func:`measure_explanations`),
    skipping those measured before.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}", parameters=("workers",))
    if backend not in STUDY_BACKENDS:
        raise ConfigError(f"backend {backend}: expected one of {', '.join(STUDY_BACKENDS)}", parameters=("backend",))
    study_dir = Path(study_dir)
    if (study_dir / "optuna.db").is_file():
        raise ConfigError(f"{study_dir}: holds a hyper-parameter search, not a study; choose another folder")
    configs = study.configs(study_dir, data_dir)
    for config in configs:  # the image folder's cells, which Study.validate left for the data folder given here
        if config.dataset_name == FOLDER_NAME:
            config.validate()
    missing = missing_data_files(configs)
    if missing:
        raise DataError(f"{len(missing)} data file(s) missing, nothing was trained; download " + "; ".join(missing))
    pending = [c for c in configs if not is_complete(c)]
    for config in pending:
        config.resume = RunDir(config.run_dir()).last_path.is_file()
    parent = study_run(study.name, study_dir) if any("mlflow" in (c.track or []) for c in pending) else None
    for config in pending:
        config.mlflow_parent = parent

    def log(message: str) -> None:
        if not quiet:
            logger.info(message)

    log(
        f"study '{study.name}': {len(configs)} experiments, {len(configs) - len(pending)} already complete"
        + (f", {workers} workers" if workers > 1 else "")
    )
    statuses = [ExperimentStatus(c, "done") for c in configs if is_complete(c)]
    started = time.perf_counter()

    timed: list[tuple[TrainConfig, float]] = []

    def finished(config: TrainConfig, seconds: float) -> None:
        statuses.append(ExperimentStatus(config, "trained"))
        timed.append((config, seconds))
        trained = {c.run_dir() for c, _ in timed}
        left = [c for c in pending if c.run_dir() not in trained]
        elapsed = time.perf_counter() - started
        log(
            f"[{len(timed)}/{len(pending)}] {config.run_dir().name} done in {_duration(seconds)}; "
            f"{_duration(elapsed)} so far, about {_duration(seconds_left(timed, left, workers))} left"
        )

    if backend == "ray":
        _run_on_ray(pending, workers, address, finished, log)
    elif workers == 1 or len(pending) <= 1:
        for k, config in enumerate(pending, start=1):
            log(f"[{k}/{len(pending)}] {config.run_dir().name}" + (" (resuming)" if config.resume else ""))
            finished(*_train_in_worker(config))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(_train_in_worker, config): config for config in pending}
            log(f"running {len(pending)} experiments, {threads} thread(s) each")
            remaining = set(futures)
            try:
                while remaining:
                    done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                    for future in done:
                        finished(*future.result())
            except BaseException:
                for future in remaining:
                    future.cancel()
                raise
    if parent:
        finish_study_run(parent)
    if study.explain is not None:
        measure_explanations(study.explain, explained_runs(study, configs), log, data_dir)
    order = {c.run_dir(): i for i, c in enumerate(configs)}
    return sorted(statuses, key=lambda s: order[s.run_dir])


def explained_runs(study: Study, configs: list[TrainConfig]) -> list[TrainConfig]:
    """Each experiment's run of its first seed: the one whose explanations a study measures."""
    first: dict[tuple, TrainConfig] = {}
    for cell, config in zip(study.cells(), configs, strict=True):
        first.setdefault((cell["dataset"], cell["size"], cell["model"], cell["variant"]), config)
    return list(first.values())


def explanations_measured(run: RunDir, wanted: StudyExplanations, test_images: int) -> bool:
    """Whether the run's ``explain --evaluate`` record already holds the study's methods, on its
    number of test images (all ``test_images`` when the test split is smaller) with its seed."""
    evaluation = run.explanation_evaluation()
    if evaluation is None:
        return False
    return (
        evaluation["seed"] == wanted.seed
        and evaluation["images"] == min(wanted.images, test_images)
        and set(wanted.methods) <= {m["method"] for m in evaluation["methods"]}
    )


def measure_explanations(
    wanted: StudyExplanations, configs: list[TrainConfig], log, data_dir: str | None = None
) -> None:
    """``explain --evaluate`` with the study's methods on each of these runs that has finished and
    has no such record yet (multi-label runs are skipped: the measures are single-label); ``data_dir``:
    where the data are now, if not where the runs were trained from."""
    from ..explain import evaluate_explanations

    pending = []
    for run in (RunDir(c.run_dir()) for c in configs if is_complete(c)):
        data = run.record()["data"]
        if data["task"] == Task.MULTI_LABEL:
            log(f"{run.path.name}: multi-label; its explanations are not measured")
        elif not explanations_measured(run, wanted, data["source"]["split_sizes"]["test"]):
            pending.append(run)
    if not pending:
        return
    log(
        f"measuring the explanations of {len(pending)} run(s): {', '.join(wanted.methods)} "
        f"on {wanted.images} test images each"
    )
    for k, run in enumerate(pending, start=1):
        started = time.perf_counter()
        evaluate_explanations(run.path, wanted.images, wanted.methods, wanted.seed, data_dir=data_dir)
        log(
            f"[{k}/{len(pending)}] {run.path.name}: explanations measured in {_duration(time.perf_counter() - started)}"
        )


def _run_on_ray(pending: list[TrainConfig], workers: int, address: str | None, finished, log) -> None:
    """Each experiment a Ray task that runs the same ``train`` as the local backend, at most
    ``workers`` at a time, each reserving its share of the cluster's CPUs (Ray sets the task's
    thread count from it). The run folders must be reachable under the same path from every node (a
    shared file system) for the study folder to collect them."""
    with ray_session(address) as ray:
        _run_ray_tasks(ray, pending, workers, finished, log)


def check_ray_address(address: str | None) -> None:
    """A cluster address (``HOST:PORT`` or ``ray://HOST:PORT``) must accept a connection within a few
    seconds: Ray itself retries for a long time before it gives up."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"address {address}: expected auto, HOST:PORT or ray://HOST:PORT", parameters=("address",))
    refused = connection_refused(host.strip("[]"), int(port))
    if refused:
        raise ConfigError(
            f"address {address}: no Ray cluster answers there within {CONNECT_SECONDS:g} s ({refused})",
            parameters=("address",),
        )


@contextmanager
def ray_session(address: str | None):
    """Ray, connected to the cluster at ``address`` or to an instance started here (and shut down,
    its files removed, afterwards)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("backend ray needs Ray: pip install 'medclassify[ray]'", parameters=("backend",)) from None
    started_here = not ray.is_initialized()
    ray_temp = None
    if started_here:
        check_ray_address(address)
        ray_temp = tempfile.mkdtemp(prefix="ray-") if address is None else None  # a local instance's files go with it
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, _temp_dir=ray_temp)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            if ray_temp is not None:
                shutil.rmtree(ray_temp, ignore_errors=True)
            raise ConfigError(
                f"--address {address}: Ray could not start or join a cluster ({first_line(exc)})"
            ) from None
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()
        if ray_temp is not None:
            shutil.rmtree(ray_temp, ignore_errors=True)


def _run_ray_tasks(ray, pending: list[TrainConfig], workers: int, finished, log) -> None:
    queue, running = list(pending), dict[Any, TrainConfig]()
    try:
        cpus = ray.cluster_resources().get("CPU", 1.0)
        task = ray.remote(num_cpus=max(1, int(cpus // workers)), max_retries=0)(_train_in_worker)
        log(f"running {len(pending)} experiments on Ray ({cpus:g} CPUs), {workers} at a time")
        while queue or running:
            while queue and len(running) < workers:
                config = queue.pop(0)
                running[task.remote(config)] = config
            done, _ = ray.wait(list(running), num_returns=1)
            running.pop(done[0])
            finished(*ray.get(done[0]))
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
