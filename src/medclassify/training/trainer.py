"""The training recipe, read top to bottom: prepare (data -> model -> optimiser) -> resume ->
epochs (train, validate, checkpoint) -> finish (test evaluation of the best checkpoint).

Defaults are the paper's: cross-entropy, Adam (lr 1e-3), 10 epochs, batch 32, shuffled training set.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict, cast

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import Dataset, DistributedSampler
from tqdm.auto import tqdm

from .. import __version__
from ..config import TrainConfig, parse_duration
from ..data import (
    BatchAugment,
    BatchLoader,
    LoadedDataset,
    Normalization,
    Split,
    compute_normalization,
    corruption_set,
    storage_line,
    tta_views,
)
from ..defaults import CARD_RESAMPLES
from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..evaluation import classification_metrics, evaluate_model, predict_split_sharded, write_results
from ..evaluation.metrics import SplitMetrics
from ..evaluation.stats import Side, bootstrap_interval
from ..io import folder_lock, write_csv, write_json
from ..models import count_parameters, create_model
from ..models.registry import ModelSpec
from ..runs import (
    RUN_FILES,
    RunDir,
    calibrate_held_run,
    check_fits_data,
    load_checkpoint,
    load_run_data,
    robustness_held_run,
    save_checkpoint,
    write_model_card,
)
from ..runs.files import CONFIG_FILE, BundleMetadata
from ..runtime import environment
from ..runtime.distributed import Distributed, barrier, gather, init_distributed, shutdown
from ..runtime.environment import environment_record, load_average, seed_everything
from .budget import CARD_PROBE_RESAMPLES, MEASURE_SECONDS, BudgetPlan, images_per_second, plan_epochs
from .recipe import (
    EarlyStopping,
    balanced_sample_weights,
    build_ema,
    build_loss,
    build_mixer,
    build_optimizer,
    build_scheduler,
    freeze_batchnorm_statistics,
    set_backbone_trainable,
)
from .tracking import check_mlflow_store, open_trackers

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "val_auc", "val_f1", "seconds", "images_per_s", "lr"]


class RunMetrics(TypedDict):
    """What :func:`train` returns of a run (metrics.json holds the same, and more)."""

    best_epoch: int
    epochs_run: int
    val: SplitMetrics
    test: SplitMetrics
    calibrated: NotRequired[dict]
    operating_point: NotRequired[dict]


@dataclass
class RunResult:
    """A finished run: its folder, the validation and test metrics, and one history row per epoch."""

    run_dir: Path
    metrics: RunMetrics
    history: list[dict] = field(default_factory=list)
    already_complete: bool = False  # a finished run was resumed: nothing was trained or written


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


@dataclass
class Progress:
    """How far a run got: the last finished epoch, the best one, one history row per epoch, and
    whether the time budget ended training before its planned epochs."""

    epoch: int = 0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    out_of_time: bool = False

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "out_of_time": self.out_of_time,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.best_epoch, self.history = state["epoch"], state["best_epoch"], state["history"]
        self.out_of_time = state.get("out_of_time", False)  # last.pt of runs before the budget's guard lacks it


class ProcessRng:
    """The random streams of one process: batch order, augmentation, torch's global one (and CUDA's)."""

    def __init__(self, shuffle: torch.Generator, augment: torch.Generator, device: torch.device):
        self.shuffle, self.augment, self.device = shuffle, augment, device

    def state_dict(self) -> dict:
        state = {
            "shuffle_rng": self.shuffle.get_state(),
            "torch_rng": torch.get_rng_state(),
            "augment_rng": self.augment.get_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.augment.set_state(state["augment_rng"])
        self.shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)


def model_spec(config: TrainConfig, data: LoadedDataset) -> ModelSpec:
    """What rebuilds the model: its registry name, input channels, classes and image size."""
    return {
        "name": config.model,
        "in_channels": data.channels,
        "num_classes": data.num_classes,
        "image_size": data.size,
    }


def bundle_metadata(config: TrainConfig, data: LoadedDataset, normalization: Normalization) -> BundleMetadata:
    """What a checkpoint needs to rebuild the model and its preprocessing without the run folder."""
    return {
        "model": model_spec(config, data),
        "preprocessing": {"size": data.size, "channels": data.channels, **normalization.as_dict()},
        "dataset": {
            "name": data.name,
            "task": str(data.task),
            "class_names": data.class_names,
            "md5": data.source["md5"],
            "orientation": data.orientation,
        },
        "medclassify_version": __version__,
    }


def _check_resumable(saved: dict, config: TrainConfig, path: Path) -> None:
    current = config.fixed_settings()
    changed = sorted(k for k in current if saved.get(k) != current[k])
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise CheckpointError(f"{path}: cannot resume with different settings ({detail})")


def train_step(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    criterion: torch.nn.Module,
    scaler: torch.amp.GradScaler,
    autocast: torch.dtype | None,
    scheduler: LRScheduler | None = None,
    grad_clip: float = 0.0,
    ema: AveragedModel | None = None,
    mixer: Any = None,
    channels_last: bool = False,
) -> float:
    """One optimiser step on a batch (mixed first with ``mixer``; the EMA and a per-batch scheduler
    follow the step), the forward pass under ``autocast`` to that dtype when given (float16 on CUDA
    with ``scaler``, bfloat16 on a CPU); returns the batch's loss. Raises :class:`TrainingDiverged`
    on a non-finite loss."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if mixer is not None:
        images, targets = mixer(images, targets)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=autocast or torch.float16, enabled=autocast is not None):
        loss = criterion(model(images).float(), targets)
    value = loss.item()
    if not math.isfinite(value):  # stop before the step spreads it into the weights
        raise TrainingDiverged(f"the training loss is {value}")
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if ema is not None:
        ema.update_parameters(getattr(model, "module", model))  # the model itself, not its DDP wrapper
    if scheduler is not None:
        scheduler.step()
    return value


def cpu_bf16_applies(config: TrainConfig, device: torch.device) -> bool:
    """``--cpu-bf16`` on a CPU whose instructions compute in bfloat16 (AMX or AVX512-BF16, as oneDNN
    reports): elsewhere bfloat16 would be emulated, slower than float32, so it is not used."""
    return config.cpu_bf16 and device.type == "cpu" and environment.cpu_has_bfloat16()


def train_one_epoch(
    model: torch.nn.Module,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    criterion: torch.nn.Module,
    scaler: torch.amp.GradScaler,
    autocast: torch.dtype | None,
    progress: Any,
    scheduler: LRScheduler | None = None,
    grad_clip: float = 0.0,
    frozen_backbone: bool = False,
    ema: AveragedModel | None = None,
    mixer: Any = None,
    channels_last: bool = False,
) -> float:
    """One pass over ``loader`` with :func:`train_step`; returns the mean training loss."""
    model.train()
    if frozen_backbone:
        freeze_batchnorm_statistics(model)
    loss_sum, count = 0.0, 0
    for images, targets in loader:
        value = train_step(
            model,
            images,
            targets,
            optimizer,
            criterion,
            scaler,
            autocast,
            scheduler,
            grad_clip,
            ema,
            mixer,
            channels_last,
        )
        loss_sum += value * len(targets)
        count += len(targets)
        progress.update(len(targets))
        progress.set_postfix(loss=f"{loss_sum / count:.4f}", refresh=False)
    return loss_sum / count


def train(config: TrainConfig, on_epoch: Callable[[dict], None] | None = None) -> RunResult:
    """Train, validate every epoch, keep the best checkpoint, and evaluate it on the test split.

    Under ``torchrun`` every process runs this function: DistributedDataParallel over the processes,
    each with its share of every batch; rank 0 alone prints and writes files.

    Args:
        config: the run: data, model, recipe, what to fit after training, where and how it runs.
        on_epoch: called with each epoch's history row once it is saved (a hyper-parameter search
            prunes there: an exception it raises stops the run, whose ``last.pt`` stays).

    Returns:
        The run folder, the validation and test figures of the best checkpoint, and the history.
    """
    started = time.perf_counter()
    config.validate()
    if "mlflow" in (config.track or []):
        check_mlflow_store()  # an unusable store stops the run before its folder is made
    check_run_folder(config)
    context, device = init_distributed(config.device)
    threads = torch.get_num_threads()  # --num-threads is this run's: the next run in the process starts afresh
    try:
        with folder_lock(config.run_dir(), "train") if context.is_main else nullcontext():
            session = TrainingSession.prepare(config, context, device, started)
            if config.resume and (finished := session.resume()) is not None:
                return finished
            session.write_run_record()
            try:
                session.open_trackers()
            except BaseException:
                if not config.resume:  # a folder holding only config.json would refuse the next try
                    session.run.config_path.unlink(missing_ok=True)
                raise
            session.log_start()
            for epoch in range(session.progress.epoch + 1, session.config.epochs + 1):
                if session.stopped_early:
                    break
                row = session.run_epoch(epoch)
                if on_epoch is not None:
                    on_epoch(row)
            return session.finish()
    finally:
        torch.set_num_threads(threads)
        shutdown(context)


def _is_start_record(run: RunDir) -> bool:
    """Whether the folder's config.json is the record a run writes as it starts."""
    try:
        record = json.loads(run.config_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"config", "environment", "written"} <= record.keys()


def check_run_folder(config: TrainConfig) -> None:
    """A new run needs a folder without a run in it (or with one stopped before its first epoch
    ended, which it starts again: only its start record, nothing trained, so nothing is lost);
    ``--resume`` needs the interrupted run's last.pt."""
    run = RunDir(config.run_dir())
    found = [name for name in RUN_FILES if (run / name).exists()]
    never_saved = found == [CONFIG_FILE] and _is_start_record(run)
    if config.resume and not run.last_path.is_file():
        again = " (it stopped before its first epoch ended: start it again without it)" if never_saved else ""
        raise CheckpointError(
            f"resume: {run.last_path} does not exist; there is no interrupted run to continue{again}",
            parameters=("resume",),
        )
    if not config.resume and found and not never_saved:
        raise CheckpointError(
            f"{run.path} already holds a run ({', '.join(found)}); pass resume to continue it, or choose another out",
            parameters=("resume", "out"),
        )
    if never_saved and not config.resume:
        logger.info(f"{run.path} was stopped before its first epoch ended; starting it again")


@dataclass
class TrainingSession:
    """One process's run: what :meth:`prepare` builds, the state that ``last.pt`` keeps, and the
    steps that move it on (:meth:`resume`, :meth:`run_epoch`, :meth:`finish`)."""

    config: TrainConfig
    context: Distributed
    device: torch.device
    run: RunDir
    data: LoadedDataset
    normalization: Normalization
    amp: bool  # float16 autocast on CUDA, for training and evaluation
    train_autocast: torch.dtype | None  # the training steps' autocast: float16 (amp) or bfloat16 (--cpu-bf16)
    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    scheduler: Any
    stopper: EarlyStopping
    rng: ProcessRng
    sampler: DistributedSampler | None
    epoch_size: int
    loader: BatchLoader
    metadata: BundleMetadata
    ema: Any = None  # torch.optim.swa_utils.AveragedModel with --ema-decay
    mixer: Any = None  # MixUp/CutMix with --mix
    budget: BudgetPlan | None = None  # how --time-budget chose the epochs
    started: float = 0.0  # when the run began (time.perf_counter()): the time budget counts from here
    progress: Progress = field(default_factory=Progress)
    trained: torch.nn.Module | None = None  # the model as trained: DDP-wrapped under torchrun
    frozen: bool | None = None  # None until the first epoch sets it
    trackers: list = field(default_factory=list)  # TensorBoard / MLflow with --track (main process)

    # ---- prepare: data -> model -> loss, optimiser, schedule -> batches ----------------------------
    @classmethod
    def prepare(
        cls, config: TrainConfig, context: Distributed, device: torch.device, started: float | None = None
    ) -> TrainingSession:
        """Build the run in the recipe's order: seed, data, normalisation, model, loss, optimiser, random
        streams, batches, (the time budget's epochs), schedule. The order is part of the numbers: keep
        it. ``started``: when the run began (``time.perf_counter()``), for the time budget."""
        if config.batch_size % context.world_size:
            raise ConfigError(
                f"batch_size {config.batch_size} is the effective batch and must divide evenly over {context.world_size} processes",
                parameters=("batch_size",),
            )
        started = time.perf_counter() if started is None else started
        environment.configure_allocator()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        elif context.enabled and device.type == "cpu":  # processes on one machine share its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.local_world_size))
        seed_everything(config.seed)
        data = load_run_data(config)
        check_fits_data(config, data)
        normalization = compute_normalization(data.splits["train"], config.normalize)

        model = create_model(config.model, data.channels, data.num_classes, data.size, pretrained=config.pretrained)
        model = (
            model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # the stub lacks memory_format
            if config.channels_last
            else model.to(device)
        )
        train_split = data.splits["train"]
        criterion = build_loss(config, train_split.labels, data.num_classes, data.multi_label).to(device)
        optimizer = build_optimizer(config, model.parameters())
        amp = config.amp and device.type == "cuda"
        train_autocast = torch.float16 if amp else (torch.bfloat16 if cpu_bf16_applies(config, device) else None)
        # each process draws its own shuffles and augmentations; one process draws exactly what it always did
        rng = ProcessRng(
            torch.Generator().manual_seed(config.seed + context.rank),
            torch.Generator(device).manual_seed(config.seed + 1 + context.rank),
            device,
        )
        batch_size = config.batch_size // context.world_size
        sampler: DistributedSampler | None = (
            DistributedSampler(
                cast(Dataset, train_split), context.world_size, context.rank, shuffle=True, seed=config.seed
            )
            if context.enabled and config.sampler != "balanced"
            else None
        )
        epoch_size = -(-len(train_split) // context.world_size)
        loader = _train_loader(config, data, normalization, device, rng, sampler, batch_size, epoch_size, context)
        mixer = build_mixer(config, data.num_classes, data.multi_label)
        ema = build_ema(model, config.ema_decay)
        budget = None
        if config.time_budget:
            if config.resume:  # the interrupted run's own choice
                epochs = load_checkpoint(RunDir(config.run_dir()).last_path)["config"]["epochs"]
            else:
                budget = _plan_budget(
                    config, context, device, data, normalization, model, criterion, loader, amp, train_autocast,
                    mixer, started,
                )  # fmt: skip
                epochs = budget.epochs
            config = _with_epochs(config, epochs)
        return cls(
            config=config,
            context=context,
            device=device,
            run=RunDir(config.run_dir()),
            data=data,
            normalization=normalization,
            amp=amp,
            train_autocast=train_autocast,
            model=model,
            criterion=criterion,
            optimizer=optimizer,
            scaler=torch.amp.GradScaler(device.type, enabled=amp),
            scheduler=build_scheduler(config, optimizer, -(-epoch_size // batch_size)),
            stopper=EarlyStopping(config.early_stopping, "min" if config.select_metric == "loss" else "max"),
            rng=rng,
            sampler=sampler,
            epoch_size=epoch_size,
            loader=loader,
            metadata=bundle_metadata(config, data, normalization),
            ema=ema,
            mixer=mixer,
            budget=budget,
            started=started,
        )

    @property
    def main(self) -> bool:
        return self.context.is_main

    @property
    def stopped_early(self) -> bool:
        """Whether early stopping or the time budget ended training before its planned epochs."""
        return self.stopper.should_stop or self.progress.out_of_time

    def open_trackers(self) -> None:
        """TensorBoard / MLflow as ``--track`` asks (the main process only)."""
        if self.main:
            self.trackers = open_trackers(
                self.config.track, self.run.path, self.run.record(), self.config.mlflow_parent
            )

    def log(self, message: str) -> None:
        if self.main and not self.config.quiet:
            logger.info(message)

    # ---- the training state: what last.pt keeps and --resume restores ----------------------------
    def stateful(self) -> dict[str, Stateful]:
        """Every object whose state a resumed run needs, under its key in ``last.pt``. The random
        streams are kept per process, beside these (``process_rng``)."""
        objects: dict[str, Stateful] = {
            "model_state": self.model,
            "optimizer_state": self.optimizer,
            "scaler_state": self.scaler,
            "early_stopping": self.stopper,
        }
        if self.scheduler is not None:
            objects["scheduler_state"] = self.scheduler
        if self.ema is not None:
            objects["ema_state"] = self.ema
        return objects

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights that are validated, kept in best.pt and tested: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def save_state(self) -> None:
        """Write ``last.pt`` (rank 0); every process contributes its random streams."""
        process_rng = gather(self.context, self.rng.state_dict())
        if self.main:
            state = {
                **self.metadata,
                "config": self.config.to_dict(),
                **self.progress.state_dict(),
                **{key: obj.state_dict() for key, obj in self.stateful().items()},
                "process_rng": process_rng,
            }
            save_checkpoint(self.run.last_path, state)

    def resume(self) -> RunResult | None:
        """Restore the state of ``last.pt``; a run that had already finished is returned as it is."""
        last_path, data = self.run.last_path, self.data
        state = load_checkpoint(last_path)
        _check_resumable(state["config"], self.config, last_path)
        if state["dataset"]["md5"] != data.source["md5"]:
            raise CheckpointError(
                f"{last_path}: the data changed since the run started (MD5 {state['dataset']['md5']} -> {data.source['md5']})"
            )
        # one RNG record per process (runs from before distributed training kept one, at the top level)
        process_rng = state.get("process_rng") or [
            {k: state[k] for k in ("shuffle_rng", "torch_rng", "augment_rng", "cuda_rng") if k in state}
        ]
        if len(process_rng) != self.context.world_size:
            raise CheckpointError(
                f"{last_path}: the run used {len(process_rng)} process(es); resume it with the same number, not {self.context.world_size}"
            )
        for key, obj in self.stateful().items():
            obj.load_state_dict(state[key])
        self.progress.load_state_dict(state)
        if (self.progress.epoch >= self.config.epochs or self.stopped_early) and self.run.is_finished():
            self.log(
                f"{self.run.path} is already complete ({self.progress.epoch} epochs); nothing was trained or written"
            )
            return self._finished_result()
        self.rng.load_state_dict(process_rng[self.context.rank])
        self.log(f"resuming {self.run.path} after epoch {self.progress.epoch}")
        return None

    def _finished_result(self) -> RunResult:
        """A finished run read back from its records, for a --resume that has nothing left to do."""
        metrics = self.run.metrics()
        return RunResult(
            self.run.path,
            {
                "best_epoch": self.progress.best_epoch,
                "epochs_run": len(self.progress.history),
                "val": metrics["val"],
                "test": metrics["test"],
            },
            self.progress.history,
            already_complete=True,
        )

    # ---- records ------------------------------------------------------------------------------------
    def write_run_record(self) -> None:
        """config.json (config, environment, data, model) and, for image folders, split.csv."""
        if not self.main:
            return
        config, data, metadata = self.config, self.data, self.metadata
        source = {k: v for k, v in data.source.items() if k != "files"}
        write_json(
            self.run.config_path,
            {
                "config": config.to_dict(),
                "written": datetime.now(UTC).isoformat(timespec="seconds"),
                "resumed_after_epoch": self.progress.epoch if config.resume else None,
                "environment": environment_record(self.device),
                "distributed": self.context.record(config.batch_size),
                "data": {**metadata["dataset"], "channels": data.channels, "size": data.size, "source": source},
                "preprocessing": metadata["preprocessing"],
                "model": {**metadata["model"], "parameters": count_parameters(self.model)},
                "time_budget": self.budget.record() if self.budget else None,
                "precision": {
                    "training": str(self.train_autocast or torch.float32).removeprefix("torch."),
                    "evaluation": "float16" if self.amp else "float32",
                },
            },
        )
        if "files" in data.source:  # image folders: which file went to which split
            rows = [(path, split) for split, paths in data.source["files"].items() for path in paths]
            write_csv(self.run.path / "split.csv", ["file", "split"], rows)

    def log_start(self) -> None:
        config, context = self.config, self.context
        self.log(
            f"training {config.model} ({count_parameters(self.model):,} parameters) on {self.data.name} {self.data.size}px, "
            f"{len(self.data.splits['train'])} images ({storage_line(self.data.source)}), {config.epochs} epochs, "
            f"device {self.device}"
            + (
                f", {context.world_size} processes ({context.backend}) of {self.loader.batch_size} images per batch"
                if context.enabled
                else ""
            )
        )

    def _diverged(self, epoch: int, reason: str) -> TrainingDiverged:
        last_path = self.run.last_path
        kept = f"{last_path} keeps epoch {epoch - 1}" if epoch > 1 else "no epoch finished, so no checkpoint was kept"
        return TrainingDiverged(
            f"training diverged in epoch {epoch} ({reason}); {kept}. Lower lr (now {self.config.lr:g}) "
            "or add grad_clip, in another out",
            parameters=("lr", "grad_clip", "out"),
        )

    # ---- one epoch: train, validate, checkpoint ------------------------------------------------------
    def _set_frozen(self, epoch: int) -> None:
        config = self.config
        now_frozen = config.freeze_backbone and (config.unfreeze_after is None or epoch <= config.unfreeze_after)
        if now_frozen == self.frozen:
            return
        if config.freeze_backbone:
            set_backbone_trainable(self.model, not now_frozen)
        # DDP syncs the parameters that require gradients when it is built
        self.trained = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.context.enabled
            else self.model
        )
        self.frozen = now_frozen

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch, validate, keep best.pt and last.pt; returns the epoch's history row."""
        config, data, context = self.config, self.data, self.context
        self._set_frozen(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        started = time.perf_counter()
        with tqdm(
            total=self.epoch_size,
            desc=f"epoch {epoch}/{config.epochs}",
            unit="img",
            disable=True if config.quiet or not self.main else None,
            leave=False,
            file=sys.stderr,
        ) as bar:
            try:
                local_loss = train_one_epoch(
                    self.trained if self.trained is not None else self.model,
                    self.loader,
                    self.optimizer,
                    self.criterion,
                    self.scaler,
                    self.train_autocast,
                    bar,
                    self.scheduler,
                    config.grad_clip,
                    bool(self.frozen),
                    self.ema,
                    self.mixer,
                    config.channels_last,
                )
            except TrainingDiverged as exc:
                raise self._diverged(epoch, str(exc)) from None
        train_loss = statistics.fmean(gather(context, local_loss))  # every process saw epoch_size images
        seconds = time.perf_counter() - started
        y_true, y_prob, val_loss = predict_split_sharded(
            self.evaluated,
            data.splits["val"],
            config.eval_batch_size,
            self.normalization,
            self.device,
            data.multi_label,
            self.amp,
            context=context,
        )
        if not (np.isfinite(y_prob).all() and math.isfinite(val_loss)):
            raise self._diverged(epoch, "the validation outputs are not finite")
        val = classification_metrics(y_true, y_prob, data.task, data.class_names)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_acc": val["acc"],
            "val_auc": val["auc"],
            "val_f1": val["f1_macro"],
            "seconds": round(seconds, 3),
            "images_per_s": round(len(data.splits["train"]) / seconds, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        progress = self.progress
        progress.history.append(row)
        progress.epoch = epoch
        for tracker in self.trackers:
            tracker.log_epoch(row)
        selected = {"auc": val["auc"], "acc": val["acc"], "f1": val["f1_macro"], "loss": val_loss}[config.select_metric]
        improved = self.stopper.step(selected)  # every process sees the same gathered metrics, so they agree
        budget_stop = self._time_budget_stop(epoch, time.perf_counter() - started)
        if improved:
            progress.best_epoch = epoch
            if self.main:
                self._save_best(row)
        self.save_state()
        if self.main:
            write_csv(
                self.run.history_path,
                HISTORY_COLUMNS,
                (
                    [f"{r[c]:.6g}" if isinstance(r[c], float) else r[c] for c in HISTORY_COLUMNS]
                    for r in progress.history
                ),
            )
        self.log(
            f"epoch {epoch}/{config.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
            f"val acc {val['acc']:.4f}  val AUC {val['auc']:.4f}  {row['images_per_s']:.0f} img/s  {seconds:.1f}s"
            + ("  *best" if improved else "")
        )
        if self.stopper.should_stop:
            self.log(f"early stopping: no better validation {config.select_metric} for {config.early_stopping} epochs")
        if budget_stop:
            self.log(budget_stop)
        return row

    def _time_budget_stop(self, epoch: int, epoch_s: float) -> str | None:
        """After an epoch that took ``epoch_s``: whether the time budget ends training here (recorded
        in the progress, so that ``--resume`` knows) and the line that says why."""
        budget, config = self.budget, self.config
        if budget is None or epoch >= config.epochs or self.stopper.should_stop:
            return None
        late = budget.out_of_time(time.perf_counter() - self.started, epoch_s)
        self.progress.out_of_time = any(gather(self.context, late))  # the processes stop together
        if not self.progress.out_of_time:
            return None
        return (
            f"time budget: epoch {epoch} took {epoch_s:.1f} s against the {budget.epoch_s:.1f} s planned; "
            f"another epoch and the evaluation would end after {budget.budget_s:g} s, so training stops "
            f"after epoch {epoch} of {config.epochs}"
        )

    def _save_best(self, row: dict) -> None:
        save_checkpoint(
            self.run.best_path,
            {
                **self.metadata,
                "model_state": self.evaluated.state_dict(),
                "epoch": self.progress.best_epoch,
                "val_metrics": row,
            },
        )

    # ---- finish: test evaluation of the best checkpoint -----------------------------------------------
    def finish(self) -> RunResult:
        """Evaluate best.pt on validation and test, write the results, and calibrate when asked."""
        config, data, progress, run = self.config, self.data, self.progress, self.run
        if progress.best_epoch == 0:  # the metric was never defined (e.g. NaN AUC): keep the last weights
            progress.best_epoch = len(progress.history)
            if self.main:
                self._save_best(progress.history[-1])
        barrier(self.context)  # best.pt is complete before every process reads it
        bundle = load_checkpoint(run.best_path)
        self.evaluated.load_state_dict(bundle["model_state"])
        metrics, outputs = evaluate_model(
            self.evaluated,
            data,
            self.normalization,
            self.device,
            config.eval_batch_size,
            self.amp,
            tta_orientation=data.orientation if config.tta else None,
            context=self.context,
        )
        if self.main:
            extra = {
                "checkpoint": run.best_path.name,
                "best_epoch": progress.best_epoch,
                "epochs_run": len(progress.history),
                "stopped_by": self._stopped_by(),
                "select_metric": config.select_metric,
                "tta": config.tta,
                "load_average_end": load_average(),
            }
            write_results(run.path, metrics, outputs, data, extra)
            # the bundle also carries the test figures, for whoever applies it
            bundle["test_metrics"] = {k: metrics["test"][k] for k in ("n", "acc", "auc", "f1_macro")}
            save_checkpoint(run.best_path, bundle)
            if config.calibrates():
                metrics.update(self._calibrate())
            if config.corruptions != "none":
                report = robustness_held_run(run.path, config, config.corruptions, str(self.device), seed=config.seed)
                for line in report.lines():
                    self.log(line)
                metrics["robustness"] = report.record
            write_model_card(run.path)
            saved = run.metrics() if self.trackers else None  # with the calibration and robustness records
            for tracker in self.trackers:
                tracker.finish(run.path, saved, progress.history)
        barrier(self.context)
        summary = cast(RunMetrics, {"best_epoch": progress.best_epoch, "epochs_run": len(progress.history), **metrics})
        return RunResult(run.path, summary, progress.history)

    def _stopped_by(self) -> str | None:
        """What ended training before its planned epochs, if anything."""
        if self.progress.out_of_time:
            return "time_budget"
        return "early_stopping" if self.stopper.should_stop and self.progress.epoch < self.config.epochs else None

    def _calibrate(self) -> dict:
        """Fit the temperature, the operating point and/or the conformal sets on validation; their
        records in metrics.json."""
        config = self.config
        done = calibrate_held_run(self.run.path, config, config, str(self.device))
        for line in done.lines():
            self.log(line)
        saved = self.run.metrics()
        return {key: saved[key] for key in ("calibrated", "operating_point", "conformal") if key in saved}


def _train_loader(
    config: TrainConfig,
    data: LoadedDataset,
    normalization: Normalization,
    device: torch.device,
    rng: ProcessRng,
    sampler: DistributedSampler | None,
    batch_size: int,
    epoch_size: int | None,
    context: Distributed,
) -> BatchLoader:
    train_split = data.splits["train"]
    return BatchLoader(
        train_split,
        batch_size,
        normalization,
        device,
        shuffle=True,
        generator=rng.shuffle,
        sampler=sampler,
        sample_weights=balanced_sample_weights(train_split.labels) if config.sampler == "balanced" else None,
        epoch_size=epoch_size if context.enabled else None,
        augment=_augmentation(config, data, rng.augment),
    )


def _augmentation(config: TrainConfig, data: LoadedDataset, generator: torch.Generator) -> BatchAugment | None:
    if config.augment == "none":
        return None
    corruptions = corruption_set(config.dataset_name, data.channels)[1] if config.augment == "medmnistc" else None
    return BatchAugment(config.augment, data.orientation, generator, corruptions)


def _with_epochs(config: TrainConfig, epochs: int) -> TrainConfig:
    """The config with the epochs the time budget chose; what depends on the epochs is checked again."""
    chosen = replace(config, epochs=epochs, time_budget=None)
    try:
        return chosen.validate()
    except ConfigError as exc:
        raise ConfigError(
            f"time_budget {config.time_budget} allows {epochs} epoch(s) here: {exc}", parameters=("time_budget",)
        ) from None


def _plan_budget(
    config: TrainConfig,
    context: Distributed,
    device: torch.device,
    data: LoadedDataset,
    normalization: Normalization,
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    loader: BatchLoader,
    amp: bool,
    train_autocast: torch.dtype | None,
    mixer: Any,
    started: float,
) -> BudgetPlan:
    """Time training steps and validation on copies (the run's weights, optimiser and random streams
    stay untouched) and choose the epochs that fit the budget; every process takes the smallest."""
    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    probe = copy.deepcopy(model).train()
    optimizer = build_optimizer(config, probe.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    ema = build_ema(probe, config.ema_decay)
    probe_rng = ProcessRng(torch.Generator().manual_seed(0), torch.Generator(device).manual_seed(1), device)
    single = replace(context, world_size=1, rank=0)
    probe_loader = _train_loader(config, data, normalization, device, probe_rng, None, loader.batch_size, None, single)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from probe_loader

    stream = batches()

    def step() -> int:
        images, targets = next(stream)
        train_step(
            probe, images, targets, optimizer, criterion, scaler, train_autocast, None, config.grad_clip, ema, mixer,
            config.channels_last,
        )  # fmt: skip
        return len(targets)

    assert config.time_budget is not None  # planned only for a run with a time budget
    budget_s = parse_duration(config.time_budget)
    train_ips = images_per_second(step, seconds=min(MEASURE_SECONDS, 0.05 * budget_s))  # short budgets time less
    val = data.splits["val"]
    sample = Split(val.images[: 4 * config.eval_batch_size], val.labels[: 4 * config.eval_batch_size])

    def evaluate() -> int:
        predict_split_sharded(probe, sample, config.eval_batch_size, normalization, device, data.multi_label, amp)
        return len(sample)

    eval_ips = images_per_second(evaluate, warmup=1, seconds=min(MEASURE_SECONDS, 0.05 * budget_s) / 4)
    # what an epoch costs besides its images: the validation metrics and two checkpoints
    y_true, y_prob, _ = predict_split_sharded(
        probe, sample, config.eval_batch_size, normalization, device, data.multi_label, amp
    )
    overhead_started = time.perf_counter()
    classification_metrics(y_true, y_prob, data.task, data.class_names)
    with tempfile.TemporaryDirectory() as folder:
        for name in ("best.pt", "last.pt"):
            save_checkpoint(Path(folder) / name, {"model": probe.state_dict(), "optimizer": optimizer.state_dict()})
    epoch_overhead_s = time.perf_counter() - overhead_started
    # the model card's bootstrap over the test images, timed on a few resamples of the sample and scaled
    card_started = time.perf_counter()
    bootstrap_interval(Side(y_true, [y_prob], data.task), CARD_PROBE_RESAMPLES)
    card_s = (time.perf_counter() - card_started) * CARD_RESAMPLES / CARD_PROBE_RESAMPLES
    card_s *= len(data.splits["test"]) / len(sample)
    torch.set_rng_state(torch_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, device)
    plan = plan_epochs(
        budget_s,
        time.perf_counter() - started,
        train_ips,
        eval_ips,
        -(-len(data.splits["train"]) // context.world_size),
        -(-len(val) // context.world_size),
        -(-len(data.splits["test"]) // context.world_size),
        len(tta_views(sample.images[:1], data.orientation)) if config.tta else 1,
        epoch_overhead_s,
        card_s if context.is_main else 0.0,
        max_epochs=config.epochs,
    )
    return replace(plan, epochs=min(gather(context, plan.epochs)))
