"""The training recipe, read top to bottom: data -> model -> optimiser -> epochs (train, validate,
checkpoint) -> test evaluation of the best checkpoint.

Defaults are the paper's: cross-entropy, Adam (lr 1e-3), 10 epochs, batch 32, shuffled training set.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from .. import __version__
from ..config import TrainConfig
from ..data import BatchAugment, BatchLoader, LoadedDataset, Normalization, compute_normalization
from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..evaluation import classification_metrics, evaluate_model, predict_split_sharded, write_results
from ..io import folder_lock, write_csv, write_json
from ..models import count_parameters, create_model
from ..runs import RUN_FILES, RunDir, calibrate_held_run, load_checkpoint, load_run_data, save_checkpoint
from ..runtime.distributed import Distributed, barrier, gather, init_distributed, shutdown
from ..runtime.environment import environment_record, seed_everything
from .recipe import (
    EarlyStopping,
    balanced_sample_weights,
    build_loss,
    build_optimizer,
    build_scheduler,
    freeze_batchnorm_statistics,
    set_backbone_trainable,
)

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "val_auc", "val_f1", "seconds", "images_per_s", "lr"]
# Options that may differ between an interrupted run and its resumption.
RESUMABLE_CHANGES = {
    "epochs",
    "device",
    "resume",
    "quiet",
    "num_threads",
    "eval_batch_size",
    "out",
    "data_dir",
    "download",
    "verify",
    "amp",
    "calibrate",
    "threshold",
    "positive_class",
}


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    already_complete: bool = False  # a finished run was resumed: nothing was trained or written


def model_spec(config: TrainConfig, data: LoadedDataset) -> dict:
    return {
        "name": config.model,
        "in_channels": data.channels,
        "num_classes": data.num_classes,
        "image_size": data.size,
    }


def bundle_metadata(config: TrainConfig, data: LoadedDataset, normalization: Normalization) -> dict:
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
    current = config.to_dict()
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise CheckpointError(f"{path}: cannot resume with different settings ({detail})")


def train_one_epoch(
    model,
    loader: BatchLoader,
    optimizer,
    criterion,
    scaler,
    amp: bool,
    progress,
    scheduler=None,
    grad_clip: float = 0.0,
    frozen_backbone: bool = False,
) -> float:
    model.train()
    if frozen_backbone:
        freeze_batchnorm_statistics(model)
    loss_sum, count = 0.0, 0
    for images, targets in loader:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(loader.device.type, dtype=torch.float16, enabled=amp):
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
        if scheduler is not None:
            scheduler.step()
        loss_sum += value * len(targets)
        count += len(targets)
        progress.update(len(targets))
        progress.set_postfix(loss=f"{loss_sum / count:.4f}", refresh=False)
    return loss_sum / count


def train(config: TrainConfig) -> RunResult:
    """Train, validate every epoch, keep the best checkpoint, and evaluate it on the test split.

    Under ``torchrun`` every process runs this function: DistributedDataParallel over the processes,
    each with its share of every batch; rank 0 alone prints and writes files."""
    config.validate()
    check_run_folder(config)
    context, device = init_distributed(config.device)
    try:
        with folder_lock(config.run_dir(), "train") if context.is_main else nullcontext():
            return _train(config, context, device)
    finally:
        shutdown(context)


def check_run_folder(config: TrainConfig) -> None:
    """A new run needs a folder without a run in it; ``--resume`` needs the interrupted run's last.pt."""
    run = RunDir(config.run_dir())
    if config.resume and not run.last_path.is_file():
        raise CheckpointError(f"--resume: {run.last_path} does not exist; there is no interrupted run to continue")
    found = [name for name in RUN_FILES if (run / name).exists()]
    if not config.resume and found:
        raise CheckpointError(
            f"{run.path} already holds a run ({', '.join(found)}); pass --resume to continue it, or choose another --out"
        )


def _diverged(epoch: int, reason: str, config: TrainConfig, last_path: Path) -> TrainingDiverged:
    kept = f"{last_path} keeps epoch {epoch - 1}" if epoch > 1 else "no epoch finished, so no checkpoint was kept"
    return TrainingDiverged(
        f"training diverged in epoch {epoch} ({reason}); {kept}. Lower --lr (now {config.lr:g}) "
        "or add --grad-clip, in another --out"
    )


def _finished_result(run_dir: Path, state: dict) -> RunResult:
    """A finished run read back from its records, for a --resume that has nothing left to do."""
    metrics = RunDir(run_dir).metrics()
    return RunResult(
        run_dir,
        {
            "best_epoch": state["best_epoch"],
            "epochs_run": len(state["history"]),
            "val": metrics["val"],
            "test": metrics["test"],
        },
        state["history"],
        already_complete=True,
    )


def _train(config: TrainConfig, context: Distributed, device: torch.device) -> RunResult:
    run = RunDir(config.run_dir())
    run_dir, last_path, best_path = run.path, run.last_path, run.best_path
    if config.batch_size % context.world_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is the effective batch and must divide evenly over {context.world_size} processes"
        )
    main = context.is_main

    def log(message: str) -> None:
        if main and not config.quiet:
            logger.info(message)

    # ---- data --------------------------------------------------------------------------------
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    elif context.enabled and device.type == "cpu":  # processes on one machine share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.local_world_size))
    seed_everything(config.seed)
    data = load_run_data(config)
    normalization = compute_normalization(data.splits["train"].images, config.normalize)
    amp = config.amp and device.type == "cuda"

    # ---- model, loss, optimiser ----------------------------------------------------------------
    model = create_model(config.model, data.channels, data.num_classes, data.size, pretrained=config.pretrained).to(
        device
    )
    train_split = data.splits["train"]
    criterion = build_loss(config, train_split.labels, data.num_classes, data.multi_label).to(device)
    optimizer = build_optimizer(config, model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    # each process draws its own shuffles and augmentations; one process draws exactly what it always did
    shuffle = torch.Generator().manual_seed(config.seed + context.rank)
    augment_rng = torch.Generator(device).manual_seed(config.seed + 1 + context.rank)
    batch_size = config.batch_size // context.world_size
    sampler = (
        DistributedSampler(train_split, context.world_size, context.rank, shuffle=True, seed=config.seed)
        if context.enabled and config.sampler != "balanced"
        else None
    )
    epoch_size = -(-len(train_split) // context.world_size)
    steps_per_epoch = -(-epoch_size // batch_size)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch)
    stopper = EarlyStopping(config.early_stopping, "min" if config.select_metric == "loss" else "max")
    history: list[dict] = []
    start_epoch, best_epoch = 1, 0

    if config.resume:
        state = load_checkpoint(last_path)
        _check_resumable(state["config"], config, last_path)
        if state["dataset"]["md5"] != data.source["md5"]:
            raise CheckpointError(
                f"{last_path}: the data changed since the run started (MD5 {state['dataset']['md5']} -> {data.source['md5']})"
            )
        # one RNG record per process (runs from before distributed training kept one, at the top level)
        process_rng = state.get("process_rng") or [
            {k: state[k] for k in ("shuffle_rng", "torch_rng", "augment_rng", "cuda_rng") if k in state}
        ]
        saved_world = len(process_rng)
        if saved_world != context.world_size:
            raise CheckpointError(
                f"{last_path}: the run used {saved_world} process(es); resume it with the same number, not {context.world_size}"
            )
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scaler.load_state_dict(state["scaler_state"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler_state"])
        stopper.load_state_dict(state["early_stopping"])
        if (state["epoch"] >= config.epochs or stopper.should_stop) and run.is_finished():
            log(f"{run_dir} is already complete ({state['epoch']} epochs); nothing was trained or written")
            return _finished_result(run_dir, state)
        rng = process_rng[context.rank]
        augment_rng.set_state(rng["augment_rng"])
        shuffle.set_state(rng["shuffle_rng"])
        torch.set_rng_state(rng["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in rng:
            torch.cuda.set_rng_state(rng["cuda_rng"], device)
        history, best_epoch = state["history"], state["best_epoch"]
        start_epoch = state["epoch"] + 1
        log(f"resuming {run_dir} after epoch {state['epoch']}")

    metadata = bundle_metadata(config, data, normalization)
    source = {k: v for k, v in data.source.items() if k != "files"}
    if main:
        write_json(
            run.config_path,
            {
                "config": config.to_dict(),
                "written": datetime.now(UTC).isoformat(timespec="seconds"),
                "resumed_after_epoch": start_epoch - 1 if config.resume else None,
                "environment": environment_record(device),
                "distributed": context.record(config.batch_size),
                "data": {**metadata["dataset"], "channels": data.channels, "size": data.size, "source": source},
                "preprocessing": metadata["preprocessing"],
                "model": {**metadata["model"], "parameters": count_parameters(model)},
            },
        )
        if "files" in data.source:  # image folders: which file went to which split
            rows = [(path, split) for split, paths in data.source["files"].items() for path in paths]
            write_csv(run_dir / "split.csv", ["file", "split"], rows)

    # ---- epochs ------------------------------------------------------------------------------
    train_loader = BatchLoader(
        train_split,
        batch_size,
        normalization,
        device,
        shuffle=True,
        generator=shuffle,
        sampler=sampler,
        sample_weights=balanced_sample_weights(train_split.labels) if config.sampler == "balanced" else None,
        epoch_size=epoch_size if context.enabled else None,
        augment=BatchAugment(config.augment, data.orientation, augment_rng) if config.augment != "none" else None,
    )
    log(
        f"training {config.model} ({count_parameters(model):,} parameters) on {data.name} {data.size}px, "
        f"{len(data.splits['train'])} images, {config.epochs} epochs, device {device}"
        + (
            f", {context.world_size} processes ({context.backend}) of {batch_size} images per batch"
            if context.enabled
            else ""
        )
    )
    frozen = None
    for epoch in range(start_epoch, config.epochs + 1):
        if stopper.should_stop:
            break
        now_frozen = config.freeze_backbone and (config.unfreeze_after is None or epoch <= config.unfreeze_after)
        if now_frozen != frozen:  # DDP syncs the parameters that require gradients when it is built
            if config.freeze_backbone:
                set_backbone_trainable(model, not now_frozen)
            trained = (
                DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                if context.enabled
                else model
            )
            frozen = now_frozen
        if sampler is not None:
            sampler.set_epoch(epoch)
        started = time.perf_counter()
        with tqdm(
            total=epoch_size,
            desc=f"epoch {epoch}/{config.epochs}",
            unit="img",
            disable=True if config.quiet or not main else None,
            leave=False,
            file=sys.stderr,
        ) as progress:
            try:
                local_loss = train_one_epoch(
                    trained,
                    train_loader,
                    optimizer,
                    criterion,
                    scaler,
                    amp,
                    progress,
                    scheduler,
                    config.grad_clip,
                    frozen,
                )
            except TrainingDiverged as exc:
                raise _diverged(epoch, str(exc), config, last_path) from None
        train_loss = statistics.fmean(gather(context, local_loss))  # every process saw epoch_size images
        seconds = time.perf_counter() - started
        y_true, y_prob, val_loss = predict_split_sharded(
            model,
            data.splits["val"],
            config.eval_batch_size,
            normalization,
            device,
            data.multi_label,
            amp,
            context=context,
        )
        if not (np.isfinite(y_prob).all() and math.isfinite(val_loss)):
            raise _diverged(epoch, "the validation outputs are not finite", config, last_path)
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
            "lr": optimizer.param_groups[0]["lr"],
        }
        history.append(row)
        selected = {"auc": val["auc"], "acc": val["acc"], "f1": val["f1_macro"], "loss": val_loss}[config.select_metric]
        improved = stopper.step(selected)  # every process sees the same gathered metrics, so they agree
        if improved:
            best_epoch = epoch
            if main:
                save_checkpoint(
                    best_path, {**metadata, "model_state": model.state_dict(), "epoch": epoch, "val_metrics": row}
                )
        rng = {
            "shuffle_rng": shuffle.get_state(),
            "torch_rng": torch.get_rng_state(),
            "augment_rng": augment_rng.get_state(),
        }
        if device.type == "cuda":
            rng["cuda_rng"] = torch.cuda.get_rng_state(device)
        process_rng = gather(context, rng)
        if main:
            state = {
                **metadata,
                "config": config.to_dict(),
                "epoch": epoch,
                "history": history,
                "best_epoch": best_epoch,
                "model_state": model.state_dict(),
                "optimizer_state": optimizer.state_dict(),
                "scaler_state": scaler.state_dict(),
                "process_rng": process_rng,
                "early_stopping": stopper.state_dict(),
            }
            if scheduler is not None:
                state["scheduler_state"] = scheduler.state_dict()
            save_checkpoint(last_path, state)
            write_csv(
                run.history_path,
                HISTORY_COLUMNS,
                ([f"{r[c]:.6g}" if isinstance(r[c], float) else r[c] for c in HISTORY_COLUMNS] for r in history),
            )
        log(
            f"epoch {epoch}/{config.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
            f"val acc {val['acc']:.4f}  val AUC {val['auc']:.4f}  {row['images_per_s']:.0f} img/s  {seconds:.1f}s"
            + ("  *best" if improved else "")
        )
        if stopper.should_stop:
            log(f"early stopping: no better validation {config.select_metric} for {config.early_stopping} epochs")

    # ---- test evaluation of the best checkpoint ------------------------------------------------
    if best_epoch == 0:  # the metric was never defined (e.g. NaN AUC): keep the last weights
        best_epoch = len(history)
        if main:
            save_checkpoint(
                best_path,
                {**metadata, "model_state": model.state_dict(), "epoch": best_epoch, "val_metrics": history[-1]},
            )
    barrier(context)  # best.pt is complete before every process reads it
    bundle = load_checkpoint(best_path)
    model.load_state_dict(bundle["model_state"])
    metrics, outputs = evaluate_model(
        model,
        data,
        normalization,
        device,
        config.eval_batch_size,
        amp,
        tta_orientation=data.orientation if config.tta else None,
        context=context,
    )
    if main:
        extra = {
            "checkpoint": best_path.name,
            "best_epoch": best_epoch,
            "epochs_run": len(history),
            "select_metric": config.select_metric,
            "tta": config.tta,
        }
        write_results(run_dir, metrics, outputs, data, extra)
        # the bundle also carries the test figures, for whoever applies it
        bundle["test_metrics"] = {k: metrics["test"][k] for k in ("n", "acc", "auc", "f1_macro")}
        save_checkpoint(best_path, bundle)
        if config.calibrate != "none" or config.threshold is not None:
            done = calibrate_held_run(
                run_dir, config, config.calibrate, str(device), config.threshold, config.positive_class
            )
            saved = run.metrics()
            metrics.update({key: saved[key] for key in ("calibrated", "operating_point") if key in saved})
            if "temperature" in done:
                log(
                    f"temperature {done['temperature']:.4g} fitted on validation; test ECE {done['before']['ece']:.4f} -> {done['after']['ece']:.4f}"
                )
            if "operating_point" in done:
                point = done["operating_point"]
                log(
                    f"threshold {point['threshold']:.4g} for {point['positive_class']} ({point['rule']} on validation); test sensitivity "
                    f"{point['test']['sensitivity']:.4f}, specificity {point['test']['specificity']:.4f}"
                )
    barrier(context)
    return RunResult(run_dir, {"best_epoch": best_epoch, "epochs_run": len(history), **metrics}, history)
