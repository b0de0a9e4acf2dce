"""What can be done again with a finished run: load its data, open its model, evaluate it, and
calibrate it (temperature scaling, an operating point and conformal prediction sets, stored in its
bundle)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ..config import TrainConfig, check_seed
from ..data import LoadedDataset, Normalization, load_dataset
from ..data.corruptions import REFERENCE_SIZE, corruption_set
from ..data.images import normalise_pixels
from ..defaults import CONFORMAL_SCORES, SEVERITIES
from ..errors import CheckpointError, ConfigError, first_line
from ..evaluation import classification_metrics, evaluate_model, write_results
from ..evaluation.calibration import CALIBRATION_METHODS, fit_temperature, negative_log_likelihood
from ..evaluation.conformal import check_level, coverage_report, fit_conformal, prediction_sets
from ..evaluation.figures import conformal_figure, reliability_diagram, robustness_figure
from ..evaluation.metrics import CALIBRATION_METRICS
from ..evaluation.robustness import ROBUSTNESS_COLUMNS, evaluate_robustness, robustness_summary
from ..evaluation.threshold import choose_threshold, operating_point, parse_rule
from ..io import atomic_path, folder_lock, write_csv, write_json
from ..models import model_from_spec
from ..runtime.environment import select_device
from ..tasks import Task, probabilities_from_logits
from .card import check_card_records, write_model_card
from .files import (
    CONFORMAL_FIGURE,
    METRICS_FILE,
    RELIABILITY_FIGURE,
    ROBUSTNESS_FIGURE,
    ROBUSTNESS_IMAGES,
    ROBUSTNESS_TABLE,
    RunDir,
    load_checkpoint,
    result_files,
    save_checkpoint,
)

T = TypeVar("T")


def load_run_data(config: TrainConfig) -> LoadedDataset:
    """The dataset and splits a config trains on."""
    data = load_dataset(
        config.dataset_name,
        config.size,
        config.data_dir,
        channels=config.channels,
        verify=config.verify,
        download=config.download,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        split_seed=config.seed,
        cache_dir=config.cache_dir,
        storage=config.data_storage,
        verify_cache=config.verify_cache,
    )
    if config.orientation:
        data.orientation = config.orientation
    return data


def check_bundle_fits(state: dict, data: LoadedDataset, path: Path) -> None:
    """The checkpoint's model must take the data's images and predict its classes."""
    spec, dataset = state["model"], state["dataset"]
    found = {
        "classes": (spec["num_classes"], data.num_classes),
        "channels": (spec["in_channels"], data.channels),
        "image size": (spec["image_size"], data.size),
        "task": (dataset["task"], data.task),
        "class names": (list(dataset["class_names"]), list(data.class_names)),
    }
    wrong = [f"{what} {have!r} vs {need!r}" for what, (have, need) in found.items() if have != need]
    if wrong:
        raise CheckpointError(
            f"{path}: the model does not fit the run's data ({'; '.join(wrong)}); nothing was written"
        )


class TorchBackend:
    """A bundle's model on a device, as a function of a normalised float32 batch to its logits."""

    name = "pytorch"

    def __init__(self, state: dict, path: Path, device: str = "auto"):
        spec = state["model"]
        self.model = model_from_spec(spec)
        try:
            self.model.load_state_dict(state["model_state"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(
                f"{path}: the weights do not fit model '{spec['name']}' ({first_line(exc)})"
            ) from None
        self.device = select_device(device)
        self.model.eval().to(self.device)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


def _logits_function(backend: TorchBackend, prep: dict, batch_size: int = 256):
    """8-bit images (N x C x H x W, NumPy) -> the bundle model's logits, batch by batch."""

    def logits_of(pixels: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                backend(normalise_pixels(pixels[i : i + batch_size], prep["mean"], prep["std"]))
                for i in range(0, len(pixels), batch_size)
            ]
        )

    return logits_of


def evaluate_run(
    run_dir: str | Path, checkpoint: str = "best", data_dir: str | None = None, device: str = "auto"
) -> dict:
    """Rebuild the run's data and model, evaluate the checkpoint on val and test, and write its
    :func:`result_files` (the best checkpoint rewrites ``metrics.json`` and ``predictions.csv``).
    Returns the metrics."""
    run = RunDir(run_dir)
    if checkpoint not in ("best", "last"):
        raise CheckpointError(f"--checkpoint {checkpoint}: expected best or last")
    config = run.config(data_dir)
    with folder_lock(run.path, "evaluate"):
        path = run / f"{checkpoint}.pt"
        state = load_checkpoint(path)
        target = select_device(device)
        data = load_run_data(config)
        check_bundle_fits(state, data, path)
        warn_if_other_data(state, data)
        spec = state["model"]
        model = model_from_spec(spec)
        model.load_state_dict(state["model_state"])
        model.to(target)
        prep = state["preprocessing"]
        normalization = Normalization(tuple(prep["mean"]), tuple(prep["std"]))
        metrics, outputs = evaluate_model(
            model,
            data,
            normalization,
            target,
            config.eval_batch_size,
            tta_orientation=data.orientation if config.tta else None,
        )
        extra = {
            "checkpoint": path.name,
            "epoch": state.get("epoch"),
            "select_metric": config.select_metric,
            "tta": config.tta,
        }
        if checkpoint == "best":
            extra["best_epoch"] = state.get("epoch")
        write_results(
            run.path, metrics, outputs, data, extra, *result_files(checkpoint), medmnist_files=checkpoint == "best"
        )
        return metrics


def calibrate_run(
    run_dir: str | Path,
    method: str = "temperature",
    data_dir: str | None = None,
    device: str = "auto",
    threshold: str | None = None,
    positive_class: str | None = None,
    conformal: float | None = None,
    conformal_score: str | None = None,
    mondrian: bool = False,
) -> dict:
    """Fit ``method`` (``temperature``, or ``none`` to keep the bundle's) on the run's validation
    split and, with ``threshold`` (a rule of :mod:`.evaluation.threshold`), choose an operating point
    for ``positive_class`` (binary tasks: the second class) on the validation split too; with
    ``conformal`` (a miscoverage level, 0.1 for 90 % sets), calibrate conformal prediction sets
    (:mod:`.evaluation.conformal`) on the validation split. All are stored in ``best.pt`` and in
    ``metrics.json`` (``calibrated``: the temperature, the calibrated val/test figures and, from the
    same logits, the ``uncalibrated`` ones; ``operating_point``: the threshold and the val/test
    sensitivity, specificity, PPV and NPV with Wilson intervals; ``conformal``: the thresholds and the
    val/test coverage reports). Returns what was fitted, with the test figures before and after the
    temperature."""
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"--method {method}: expected one of {', '.join(CALIBRATION_METHODS)}")
    if method == "none" and threshold is None and conformal is None:
        raise ConfigError("nothing to do: choose --method temperature, --threshold RULE and/or --conformal LEVEL")
    if threshold is not None:
        parse_rule(threshold)
    elif positive_class is not None:
        raise ConfigError("--positive-class needs --threshold RULE (it names the class the threshold decides)")
    if conformal is not None:
        check_level(conformal)
    elif mondrian or conformal_score is not None:
        given = "--mondrian" if mondrian else f"--conformal-score {conformal_score}"
        raise ConfigError(f"{given} needs --conformal LEVEL (the prediction sets it shapes)")
    conformal_score = conformal_score or CONFORMAL_SCORES[0]
    run = RunDir(run_dir)
    config = run.config(data_dir)
    return _with_card(
        run,
        "calibrate",
        lambda: calibrate_held_run(
            run.path, config, method, device, threshold, positive_class, conformal, conformal_score, mondrian
        ),
    )


def _with_card(run: RunDir, command: str, operation: Callable[[], T]) -> T:
    """Hold the run folder, check the records its model card is written from (a damaged one stops
    the command before anything changes), do ``operation`` and rewrite the card."""
    with folder_lock(run.path, command):
        check_card_records(run.path)
        done = operation()
        write_model_card(run.path)
        return done


def check_fits_data(config: TrainConfig, data: LoadedDataset) -> None:
    """What ``train`` does after training (an operating point, conformal sets) must fit the data:
    checked before the first epoch, not after the last."""
    _fitting_positive(data, config.threshold, config.positive_class, config.conformal)


def _fitting_positive(
    data: LoadedDataset, threshold: str | None, positive_class: str | None, conformal: float | None
) -> int | None:
    """The index of the class an operating point decides (None without ``threshold``), once the
    operating point and the conformal sets asked for are found to fit the data."""
    if conformal is not None and data.multi_label:
        raise ConfigError(f"--conformal: prediction sets are for single-label tasks; {data.name} is {data.task}")
    return _positive_index(data.class_names, data.task, positive_class) if threshold is not None else None


def _positive_index(class_names: list[str], task: str, positive_class: str | None) -> int:
    if positive_class is None:
        if task != Task.BINARY:
            raise ConfigError(
                f"--positive-class is needed for an operating point of a {task} task; classes: {', '.join(class_names)}"
            )
        return 1
    if positive_class not in class_names:
        raise ConfigError(
            f"--positive-class {positive_class}: not a class of this model; classes: {', '.join(class_names)}"
        )
    return class_names.index(positive_class)


def calibrate_held_run(
    run_dir: Path,
    config: TrainConfig,
    method: str = "temperature",
    device: str = "auto",
    threshold: str | None = None,
    positive_class: str | None = None,
    conformal: float | None = None,
    conformal_score: str = "lac",
    mondrian: bool = False,
) -> dict:
    """:func:`calibrate_run` for a run folder this process already holds (``train --calibrate``)."""
    run = RunDir(run_dir)
    refitted: list[str] = []
    if not run.is_finished():
        raise CheckpointError(f"{run.path}: no {METRICS_FILE}; calibrate a finished run")
    bundle = run.bundle()
    backend = TorchBackend(bundle, run.best_path, device)
    prep = bundle["preprocessing"]
    data = load_run_data(config)
    check_bundle_fits(bundle, data, run.best_path)
    warn_if_other_data(bundle, data)
    if method == "temperature":
        # a threshold or conformal sets fitted on the old temperature's scores would no longer hold: refit
        # them on the new scores with their own settings, unless new ones are asked for
        earlier_point, earlier_sets = bundle.get("operating_point"), bundle.get("conformal")
        if threshold is None and earlier_point:
            threshold, positive_class = earlier_point["rule"], earlier_point["positive_class"]
            refitted.append(f"the operating point ({threshold} for '{positive_class}')")
        if conformal is None and earlier_sets:
            conformal, conformal_score = earlier_sets["alpha"], earlier_sets["score"]
            mondrian = bool(earlier_sets.get("mondrian"))
            refitted.append(f"the conformal sets ({conformal_score}, miscoverage {conformal:g})")
    positive = _fitting_positive(data, threshold, positive_class, conformal)

    logits_of = _logits_function(backend, prep)
    split_logits = {split: logits_of(data.splits[split].images.numpy()) for split in ("val", "test")}
    labels = {split: data.splits[split].labels.numpy() for split in ("val", "test")}
    metrics = run.metrics()
    done: dict = {}

    def probabilities(t: float) -> dict:
        return {split: probabilities_from_logits(split_logits[split] / t, data.multi_label) for split in split_logits}

    def figures(scores: dict) -> dict:
        return {
            split: classification_metrics(labels[split], scores[split], data.task, data.class_names) for split in scores
        }

    if method == "temperature":
        temperature = fit_temperature(split_logits["val"], labels["val"], data.multi_label)
        record = {
            "method": method,
            "temperature": temperature,
            "fitted_on": "val",
            "data_md5": data.source["md5"],
            "val_nll_before": negative_log_likelihood(split_logits["val"], labels["val"], data.multi_label),
            "val_nll_after": negative_log_likelihood(split_logits["val"], labels["val"], data.multi_label, temperature),
        }
        # both from the same logits of the bundle's model (no test-time augmentation), so that they compare
        raw_scores, scores = probabilities(1.0), probabilities(temperature)
        raw, calibrated = figures(raw_scores), figures(scores)
        metrics["calibrated"] = {**record, **calibrated, "uncalibrated": raw}
        bundle["calibration"] = record
        reliability_diagram(
            labels["test"], raw_scores["test"], scores["test"], data.task, run / RELIABILITY_FIGURE, temperature
        )
        done.update(
            record,
            before={k: raw["test"][k] for k in CALIBRATION_METRICS},
            after={k: calibrated["test"][k] for k in CALIBRATION_METRICS},
        )
    else:
        temperature = float((bundle.get("calibration") or {}).get("temperature", 1.0))
        scores = probabilities(temperature)
    if threshold is not None:
        is_positive = {
            split: (labels[split][:, positive] == 1) if data.multi_label else labels[split] == positive
            for split in labels
        }
        chosen = choose_threshold(is_positive["val"], scores["val"][:, positive], threshold)
        point = {
            "rule": threshold,
            "positive_class": data.class_names[positive],
            "threshold": chosen,
            "chosen_on": "val",
            "data_md5": data.source["md5"],
            "temperature": temperature,
            **{split: operating_point(is_positive[split], scores[split][:, positive], chosen) for split in labels},
        }
        bundle["operating_point"] = point
        metrics["operating_point"] = point
        done["operating_point"] = point
    if conformal is not None:
        fitted = {
            **fit_conformal(scores["val"], labels["val"], conformal, conformal_score, mondrian),
            "fitted_on": "val",
            "data_md5": data.source["md5"],
            "temperature": temperature,
        }
        sets = {split: prediction_sets(scores[split], fitted) for split in labels}
        reports = {split: coverage_report(sets[split], labels[split], data.class_names, conformal) for split in labels}
        conformal_figure(reports["test"], sets["test"].sum(axis=1), run / CONFORMAL_FIGURE)
        bundle["conformal"] = fitted
        metrics["conformal"] = {**fitted, **reports}
        done["conformal"] = metrics["conformal"]
    if refitted:
        warnings.warn(
            f"the new temperature changes the probabilities, so {' and '.join(refitted)} fitted on the old ones "
            "were fitted again on the validation split",
            stacklevel=2,
        )
        done["refitted"] = refitted
    save_checkpoint(run.best_path, bundle)
    write_json(run.metrics_path, metrics)
    return done


def warn_if_other_data(bundle: dict, data: LoadedDataset) -> None:
    """One warning when the data at hand are not those the bundle's model was trained on."""
    if data.source["md5"] != bundle["dataset"]["md5"]:
        warnings.warn(
            f"the data differ from those the run was trained on (MD5 {bundle['dataset']['md5']} -> {data.source['md5']})",
            stacklevel=3,
        )


def robustness_run(
    run_dir: str | Path,
    corruptions: str = "auto",
    data_dir: str | None = None,
    device: str = "auto",
    severities: tuple[int, ...] = SEVERITIES,
    seed: int | None = None,
) -> dict:
    """Evaluate the run's bundle on its test split clean and under corruptions
        (:func:`.data.corruptions.corruption_set`: ``auto``, ``medmnistc`` or ``generic``) and write
        ``robustness.csv``, ``robustness.npz`` (per image: right or wrong, clean and per variant), the
        figure, and ``metrics.json``'s ``robustness`` record. The random corruptions (noise, blur
    directions) are drawn from ``seed`` (default: the run's). Returns that record."""
    if not severities or any(s not in SEVERITIES for s in severities):
        raise ConfigError(f"--severities {severities}: expected severities from {SEVERITIES[0]} to {SEVERITIES[-1]}")
    if seed is not None:
        check_seed(seed)
    run = RunDir(run_dir)
    config = run.config(data_dir)
    return _with_card(
        run,
        "robustness",
        lambda: robustness_held_run(
            run.path, config, corruptions, device, severities, config.seed if seed is None else seed
        ),
    )


def robustness_held_run(
    run_dir: Path,
    config: TrainConfig,
    corruptions: str = "auto",
    device: str = "auto",
    severities: tuple[int, ...] = SEVERITIES,
    seed: int = 0,
) -> dict:
    """:func:`robustness_run` for a run folder this process already holds (``train --robustness``)."""
    run = RunDir(run_dir)
    if not run.is_finished():
        raise CheckpointError(f"{run.path}: no {METRICS_FILE}; test the robustness of a finished run")
    bundle = run.bundle()
    data = load_run_data(config)
    check_bundle_fits(bundle, data, run.best_path)
    which, chosen = corruption_set(config.dataset_name, data.channels, corruptions)
    logits_of = _logits_function(TorchBackend(bundle, run.best_path, device), bundle["preprocessing"])
    temperature = float((bundle.get("calibration") or {}).get("temperature", 1.0))
    conformal = bundle.get("conformal") if not data.multi_label else None
    test = data.splits["test"]

    def probabilities_of(images) -> np.ndarray:
        return probabilities_from_logits(logits_of(images.numpy()) / temperature, data.multi_label)

    result = evaluate_robustness(
        probabilities_of, test.images, test.labels.numpy(), data.task, chosen, severities, seed, conformal
    )
    summary = robustness_summary(result)
    write_csv(
        run / ROBUSTNESS_TABLE,
        list(ROBUSTNESS_COLUMNS),
        ([row[c] for c in ROBUSTNESS_COLUMNS] for row in result.rows),
    )
    with atomic_path(run / ROBUSTNESS_IMAGES) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, clean=result.clean_correct, corrupted=result.corrupted_correct)
    robustness_figure(result.rows, summary, run / ROBUSTNESS_FIGURE)
    record = {
        **summary,
        "corruptions": which,
        "dataset": config.dataset_name,
        "image_size": data.size,
        "reference_size": REFERENCE_SIZE,
        "seed": seed,
        "temperature": temperature,
        "conformal_target": 1 - conformal["alpha"] if conformal else None,
        "clean_coverage": result.rows[0]["coverage"],
        "corrupted_coverage": _mean_or_none([row["coverage"] for row in result.rows[1:]]),
    }
    metrics = run.metrics()
    metrics["robustness"] = record
    write_json(run.metrics_path, metrics)
    return record


def _mean_or_none(values: list) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))
