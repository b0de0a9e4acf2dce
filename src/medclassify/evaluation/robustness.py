"""How a model's test figures fall when its images are corrupted (:mod:`..data.corruptions`).

Every test image is classified clean and under each corruption at each severity. Per corruption and
severity: accuracy, macro AUC, macro-F1, expected calibration error and, when the model carries
conformal thresholds, the coverage and mean size of its prediction sets. The summary follows
ImageNet-C (Hendrycks & Dietterich, 2019) without a baseline model: the corruption error CE of a
corruption is its error averaged over the severities, the mean corruption error mCE their mean, and
the relative mCE the mean of CE minus the clean error, i.e. the accuracy the corruptions cost.
Intervals are percentile bootstraps over the test images, each draw scoring the same images clean and
corrupted, so the clean-minus-corrupted difference is paired.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..data.corruptions import Corruption, corrupt
from ..defaults import SEVERITIES
from ..tasks import Task
from .conformal import prediction_sets
from .metrics import accuracy, auc_score, calibration_metrics, macro_f1, predicted_labels

ROBUSTNESS_COLUMNS = (
    "corruption",
    "family",
    "severity",
    "acc",
    "auc",
    "f1_macro",
    "ece",
    "coverage",
    "mean_set_size",
)


@dataclass
class RobustnessResult:
    """The table (one row per corruption and severity, the clean images first) and per image
    whether it was classified right (multi-label: the share of its labels) clean and in each variant."""

    rows: list[dict]
    clean_correct: np.ndarray  # N
    corrupted_correct: np.ndarray  # N x variants, in the order of rows[1:]


def _correct(labels: np.ndarray, scores: np.ndarray, task: str) -> np.ndarray:
    predicted = predicted_labels(scores, task)
    if task == Task.MULTI_LABEL:
        return (predicted == labels).mean(axis=1)
    return (predicted == labels).astype(np.float64)


def _row(name, family, severity, labels, scores, task, conformal) -> dict:
    row = {
        "corruption": name,
        "family": family,
        "severity": severity,
        "acc": accuracy(labels, scores, task),
        "auc": auc_score(labels, scores, task),
        "f1_macro": macro_f1(labels, scores, task),
        "ece": calibration_metrics(labels, scores, task)["ece"],
        "coverage": None,
        "mean_set_size": None,
    }
    if conformal is not None:
        sets = prediction_sets(scores, conformal)
        row["coverage"] = float(sets[np.arange(len(labels)), labels].mean())
        row["mean_set_size"] = float(sets.sum(axis=1).mean())
    return row


def evaluate_robustness(
    probabilities_of: Callable[[torch.Tensor], np.ndarray],
    images: torch.Tensor,
    labels: np.ndarray,
    task: str,
    corruptions: list[Corruption],
    severities: tuple[int, ...] = SEVERITIES,
    seed: int = 0,
    conformal: dict | None = None,
) -> RobustnessResult:
    """``probabilities_of(8-bit images N x C x H x W)`` on the clean images and on each corruption at
    each severity. Each (corruption, severity) draws its randomness from its own generator seeded
    from ``seed``, so a row does not depend on which others were run."""
    scores = probabilities_of(images)
    rows = [_row("clean", "clean", 0, labels, scores, task, conformal)]
    clean_correct = _correct(labels, scores, task)
    corrupted = []
    for index, corruption in enumerate(corruptions):
        for severity in severities:
            generator = torch.Generator(images.device).manual_seed(seed * 1_000_003 + index * 10 + severity)
            scores = probabilities_of(corrupt(images, corruption, severity, generator))
            rows.append(_row(corruption.name, corruption.family, severity, labels, scores, task, conformal))
            corrupted.append(_correct(labels, scores, task))
    return RobustnessResult(rows, clean_correct, np.stack(corrupted, axis=1))


def _interval(draws: np.ndarray) -> list[float]:
    return [float(v) for v in np.percentile(draws, [2.5, 97.5])]


def _draw_seeds(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The seeds (rows) of one bootstrap draw, with replacement; one seed is kept as it is."""
    return values[rng.integers(0, len(values), len(values))] if len(values) > 1 else values


def bootstrap_means(per_seed: list[np.ndarray], n_boot: int = 1000, seed: int = 0) -> tuple[float, list[float]]:
    """The mean of per-image values over seeds and images, with a 95 % percentile interval whose
    draws resample the seeds, then the images (each seed scored the same test images)."""
    values = np.stack(per_seed)
    rng = np.random.default_rng(seed)
    n = values.shape[1]
    draws = np.empty(n_boot)
    for b in range(n_boot):
        chosen = _draw_seeds(values, rng)
        draws[b] = chosen[:, rng.integers(0, n, n)].mean()
    return float(values.mean()), _interval(draws)


def bootstrap_mean_difference(
    a: list[np.ndarray], b: list[np.ndarray], n_boot: int = 1000, seed: int = 0
) -> tuple[float, list[float]]:
    """The difference (b - a) of two models' mean per-image values on the same test images, with a
    95 % interval whose draws resample each side's seeds, then the images (the same for both: paired)."""
    values_a, values_b = np.stack(a), np.stack(b)
    rng = np.random.default_rng(seed)
    n = values_a.shape[1]
    draws = np.empty(n_boot)
    for i in range(n_boot):
        side_a, side_b = _draw_seeds(values_a, rng), _draw_seeds(values_b, rng)
        images = rng.integers(0, n, n)
        draws[i] = side_b[:, images].mean() - side_a[:, images].mean()
    return float(values_b.mean() - values_a.mean()), _interval(draws)


def robustness_summary(result: RobustnessResult, n_boot: int = 1000, seed: int = 0) -> dict:
    """Clean and mean corrupted accuracy with intervals, their paired difference, mCE, relative mCE,
    and CE per corruption and per family."""
    corrupted_mean = result.corrupted_correct.mean(axis=1)
    drop = result.clean_correct - corrupted_mean
    clean_acc, clean_ci = bootstrap_means([result.clean_correct], n_boot, seed)
    corrupted_acc, corrupted_ci = bootstrap_means([corrupted_mean], n_boot, seed)
    difference, difference_ci = bootstrap_means([drop], n_boot, seed)
    clean_error = 1 - clean_acc
    per_corruption: dict[str, dict] = {}
    for row in result.rows[1:]:
        entry = per_corruption.setdefault(row["corruption"], {"family": row["family"], "errors": []})
        entry["errors"].append(1 - row["acc"])
    ce = {name: float(np.mean(e["errors"])) for name, e in per_corruption.items()}
    families: dict[str, list[float]] = {}
    for name, entry in per_corruption.items():
        families.setdefault(entry["family"], []).append(ce[name])
    mce = float(np.mean(list(ce.values())))
    worst = max(ce, key=lambda name: ce[name])
    return {
        "clean_acc": clean_acc,
        "clean_acc_ci": clean_ci,
        "corrupted_acc": corrupted_acc,
        "corrupted_acc_ci": corrupted_ci,
        "acc_drop": difference,
        "acc_drop_ci": difference_ci,
        "clean_error": clean_error,
        "mce": mce,
        "relative_mce": mce - clean_error,
        "ce": ce,
        "family_ce": {family: float(np.mean(values)) for family, values in families.items()},
        "worst_corruption": worst,
        "severities": sorted({row["severity"] for row in result.rows[1:]}),
        "n": len(result.clean_correct),
    }


def robustness_line(summary: dict) -> str:
    """One sentence from a summary's numbers."""
    return (
        f"clean ACC {summary['clean_acc']:.4f} ({summary['clean_acc_ci'][0]:.4f}-{summary['clean_acc_ci'][1]:.4f}), "
        f"corrupted ACC {summary['corrupted_acc']:.4f} ({summary['corrupted_acc_ci'][0]:.4f}-"
        f"{summary['corrupted_acc_ci'][1]:.4f}) over {len(summary['ce'])} corruptions x {len(summary['severities'])} "
        f"severities; mCE {summary['mce']:.4f}, relative mCE {summary['relative_mce']:.4f}; hardest: "
        f"{summary['worst_corruption']} (CE {summary['ce'][summary['worst_corruption']]:.4f})"
    )
