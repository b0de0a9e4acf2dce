"""What can be done again with a finished run: load its data, open its model, evaluate it, and
calibrate it (temperature scaling, an operating point and conformal prediction sets, stored in its
bundle)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch

from ..config import CALIBRATION_CHOICES, PostTrainingConfig, TrainConfig, check_seed
from ..data import LoadedDataset, Normalization, load_dataset
from ..data.corruptions import REFERENCE_SIZE, corruption_set
from ..data.images import normalise_pixels
from ..defaults import SEVERITIES, CorruptionSet
from ..errors import CheckpointError, ConfigError, first_line
from ..evaluation import classification_metrics, evaluate_model, write_results
from ..evaluation.calibration import fit_temperature, negative_log_likelihood
from ..evaluation.conformal import conformal_summary, coverage_report, fit_conformal, prediction_sets
from ..evaluation.figures import conformal_figure, reliability_diagram, robustness_figure
from ..evaluation.metrics import CALIBRATION_METRICS
from ..evaluation.robustness import ROBUSTNESS_COLUMNS, evaluate_robustness, robustness_line, robustness_summary
from ..evaluation.threshold import choose_threshold, operating_point
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
Checkpoint = Literal["best", "last"]
CHECKPOINTS: tuple[Checkpoint, ...] = ("best", "last")


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


def _logits_function(backend: TorchBackend, prep: dict, batch_size: int = 256) -> Callable[[np.ndarray], np.ndarray]:
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
    run_dir: str | Path, checkpoint: Checkpoint = "best", data_dir: str | None = None, device: str = "auto"
) -> EvaluationResult:
    """Rebuild a run's data and model and evaluate one of its checkpoints on the validation and test splits.

    Args:
        run_dir: a run folder written by :func:`.train`.
        checkpoint: ``"best"`` (rewrites ``metrics.json`` and ``predictions.csv``) or ``"last"``
            (writes ``metrics_last.json`` and ``predictions_last.csv``).
        data_dir: where the run's data are now, if they moved since training.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        The validation and test figures and the files written.
    """
    run = RunDir(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise CheckpointError(
            f"checkpoint {checkpoint!r}: expected one of {', '.join(CHECKPOINTS)}", parameters=("checkpoint",)
        )
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
        files = result_files(checkpoint)
        write_results(run.path, metrics, outputs, data, extra, *files, medmnist_files=checkpoint == "best")
        return EvaluationResult(checkpoint, metrics["val"], metrics["test"], [run / name for name in files])


@dataclass
class EvaluationResult:
    """A checkpoint's figures on the validation and test splits, and the files they were written to."""

    checkpoint: str  # "best", "last", or the exported file evaluated (model.int8.onnx)
    val: dict
    test: dict
    files: list[Path]


@dataclass
class CalibrationResult:
    """What :func:`calibrate_run` fitted on the validation split, with the test figures it changed.

    ``temperature`` is None when none was fitted; ``before`` and ``after`` hold the test split's
    calibration metrics at temperature 1 and at the fitted one; ``operating_point`` and ``conformal``
    are the records stored in ``metrics.json`` (None when not asked for); ``refitted`` names what a new
    temperature made fit again."""

    temperature: float | None = None
    val_nll_before: float | None = None
    val_nll_after: float | None = None
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    operating_point: dict | None = None
    conformal: dict | None = None
    refitted: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The outcome in words, one line per thing fitted (what ``calibrate`` prints and ``train`` logs)."""
        lines = []
        if self.temperature is not None:
            lines.append(
                f"temperature {self.temperature:.4g}, fitted on the validation split (NLL {self.val_nll_before:.4f} -> "
                f"{self.val_nll_after:.4f})"
            )
            lines.append(
                "test split, before -> after: "
                + ", ".join(f"{name} {self.before[name]:.4f} -> {self.after[name]:.4f}" for name in CALIBRATION_METRICS)
            )
        if self.operating_point is not None:
            point = self.operating_point
            lines.append(
                f"threshold {point['threshold']:.4g} for '{point['positive_class']}' ({point['rule']}, chosen on the "
                "validation split)"
            )
            for split in ("val", "test"):
                figures = point[split]
                lines.append(
                    f"{split}: "
                    + ", ".join(
                        f"{name} {figures[name]:.4f} ({figures[name + '_ci'][0]:.4f}-{figures[name + '_ci'][1]:.4f})"
                        for name in ("sensitivity", "specificity", "ppv", "npv")
                    )
                )
        if self.conformal is not None:
            lines.append(conformal_summary(self.conformal))
        return lines


def calibrate_run(
    run_dir: str | Path,
    settings: PostTrainingConfig | None = None,
    data_dir: str | None = None,
    device: str = "auto",
) -> CalibrationResult:
    """Fit a temperature, an operating point and/or conformal prediction sets on a finished run's
    validation split and store them in its ``best.pt`` (which predict, serve, explain and export apply)
    and ``metrics.json``; rewrite its model card.

    Args:
        run_dir: a finished run folder.
        settings: what to fit (its ``corruptions`` is not used here); default: a temperature only.
            ``calibration="none"`` keeps the bundle's temperature, e.g. to choose only a threshold.
        data_dir: where the run's data are now, if they moved since training.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        The temperature with the test figures before and after it, and the operating point's and
        conformal sets' records (sensitivity, specificity, PPV, NPV with Wilson intervals; coverage).
    """
    settings = settings if settings is not None else PostTrainingConfig(calibration="temperature")
    if settings.calibration not in CALIBRATION_CHOICES:
        raise ConfigError(
            f"calibration {settings.calibration!r}: expected one of {', '.join(CALIBRATION_CHOICES)}",
            parameters=("calibration",),
        )
    if not settings.calibrates():
        raise ConfigError(
            "nothing to do: choose calibration temperature, a threshold and/or conformal",
            parameters=("calibration", "threshold", "conformal"),
        )
    settings.check()
    run = RunDir(run_dir)
    config = run.config(data_dir)
    return _with_card(run, "calibrate", lambda: calibrate_held_run(run.path, config, settings, device))


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
        raise ConfigError(
            f"conformal: prediction sets are for single-label tasks; {data.name} is {data.task}",
            parameters=("conformal",),
        )
    return _positive_index(data.class_names, data.task, positive_class) if threshold is not None else None


def _positive_index(class_names: list[str], task: str, positive_class: str | None) -> int:
    if positive_class is None:
        if task != Task.BINARY:
            raise ConfigError(
                f"positive_class is needed for an operating point of a {task} task; classes: {', '.join(class_names)}",
                parameters=("positive_class",),
            )
        return 1
    if positive_class not in class_names:
        raise ConfigError(
            f"positive_class {positive_class}: not a class of this model; classes: {', '.join(class_names)}",
            parameters=("positive_class",),
        )
    return class_names.index(positive_class)


def calibrate_held_run(
    run_dir: Path, config: TrainConfig, settings: PostTrainingConfig, device: str = "auto"
) -> CalibrationResult:
    """:func:`calibrate_run` for a run folder this process already holds (``train --calibration``)."""
    threshold, positive_class = settings.threshold, settings.positive_class
    conformal, conformal_score, mondrian = settings.conformal, settings.conformal_score, settings.mondrian
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
    if settings.calibration == "temperature":
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
    done = CalibrationResult(refitted=refitted)

    def probabilities(t: float) -> dict:
        return {split: probabilities_from_logits(split_logits[split] / t, data.multi_label) for split in split_logits}

    def figures(scores: dict) -> dict:
        return {
            split: classification_metrics(labels[split], scores[split], data.task, data.class_names) for split in scores
        }

    if settings.calibration == "temperature":
        temperature = fit_temperature(split_logits["val"], labels["val"], data.multi_label)
        record = {
            "method": settings.calibration,
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
        done.temperature, done.val_nll_before, done.val_nll_after = (
            temperature,
            record["val_nll_before"],
            record["val_nll_after"],
        )
        done.before = {k: raw["test"][k] for k in CALIBRATION_METRICS}
        done.after = {k: calibrated["test"][k] for k in CALIBRATION_METRICS}
    else:
        temperature = float((bundle.get("calibration") or {}).get("temperature", 1.0))
        scores = probabilities(temperature)
    if threshold is not None and positive is not None:  # positive: found for every threshold
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
        done.operating_point = point
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
        done.conformal = metrics["conformal"]
    if refitted:
        warnings.warn(
            f"the new temperature changes the probabilities, so {' and '.join(refitted)} fitted on the old ones "
            "were fitted again on the validation split",
            stacklevel=2,
        )
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
    corruptions: CorruptionSet = "auto",
    data_dir: str | None = None,
    device: str = "auto",
    severities: tuple[int, ...] = SEVERITIES,
    seed: int | None = None,
) -> RobustnessReport:
    """Evaluate a run's bundle on its test split, clean and under corruptions at several severities.

    Writes ``robustness.csv``, ``robustness.npz`` (per image: right or wrong, clean and per variant),
    the figure, and ``metrics.json``'s ``robustness`` record; rewrites the model card.

    Args:
        run_dir: a finished run folder.
        corruptions: ``"medmnistc"`` (MedMNIST-C's for the dataset), ``"generic"`` (for any images) or
            ``"auto"`` (medmnistc where MedMNIST-C has the dataset); see :func:`.data.corruptions.corruption_set`.
        data_dir: where the run's data are now, if they moved since training.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        severities: the severities to test, from 1 to 5.
        seed: draws the random corruptions (noise, blur directions); default: the run's seed.

    Returns:
        The clean and corrupted accuracy with intervals, mCE, the error per corruption and family, and
        the conformal coverage clean and corrupted (for a model with conformal sets).
    """
    if not severities or any(s not in SEVERITIES for s in severities):
        raise ConfigError(
            f"severities {list(severities)}: expected severities from {SEVERITIES[0]} to {SEVERITIES[-1]}",
            parameters=("severities",),
        )
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
) -> RobustnessReport:
    """:func:`robustness_run` for a run folder this process already holds (``train --corruptions``)."""
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

    def probabilities_of(images: torch.Tensor) -> np.ndarray:
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
    return RobustnessReport(record)


@dataclass
class RobustnessReport:
    """The ``robustness`` record :func:`robustness_run` stores in ``metrics.json``, with its main figures."""

    record: dict

    @property
    def clean_acc(self) -> float:
        return self.record["clean_acc"]

    @property
    def corrupted_acc(self) -> float:
        return self.record["corrupted_acc"]

    @property
    def mce(self) -> float:
        """The mean corruption error over corruptions and severities."""
        return self.record["mce"]

    def lines(self) -> list[str]:
        """The outcome in words (what ``robustness`` prints and ``train`` logs)."""
        record = self.record
        lines = [
            f"{record['corruptions']} corruptions on the test split of {record['dataset']}: {robustness_line(record)}",
            "corruption error by family: " + ", ".join(f"{name} {ce:.4f}" for name, ce in record["family_ce"].items()),
        ]
        if record["clean_coverage"] is not None:
            lines.append(
                f"conformal coverage (target {record['conformal_target']:.2f}): clean {record['clean_coverage']:.4f}, "
                f"corrupted {record['corrupted_coverage']:.4f}"
            )
        return lines


def _mean_or_none(values: list) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))
