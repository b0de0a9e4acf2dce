"""Figures of one run's evaluation, each saved as PNG (150 dpi) and SVG: the reliability diagram
before and after temperature scaling, the conformal sets (sizes, coverage per class), accuracy under corruptions, and the
helpers the study figures share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.artist
import numpy as np
from matplotlib.figure import Figure

from ..io import atomic_path
from ..tasks import Task
from .metrics import calibration_error, predicted_labels

LEGEND_POINTS = 8  # the smallest legend text a printed figure can still be read at


def subplots(*grid: int, figsize: tuple[float, float], **options: Any) -> tuple[Figure, Any]:
    """A figure of its own and its axes, as ``pyplot.subplots`` makes them, but without pyplot: no
    global figure list to close and no switch of the user's plotting backend (a notebook keeps its
    own); ``savefig`` renders it with Agg."""
    figure = Figure(figsize=figsize, layout="constrained")
    return figure, figure.subplots(*grid, **options)


def save_figure(figure: Figure, path_without_suffix: Path, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Write the figure atomically in each format (PNG at 150 dpi)."""
    paths = []
    for fmt in formats:
        path = path_without_suffix.with_name(f"{path_without_suffix.name}.{fmt}")
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=fmt, bbox_inches="tight", dpi=150 if fmt == "png" else "figure")
        paths.append(path)
    return paths


def rescaled(scores: np.ndarray, temperature: float, multi_label: bool) -> np.ndarray:
    """Probabilities under ``logits / T``, from the probabilities themselves: log-probabilities are
    the logits up to a constant per image (softmax), and logit(p) is the logit (sigmoid)."""
    clipped = np.clip(scores, 1e-12, 1 - 1e-12)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-np.log(clipped / (1 - clipped)) / temperature))
    z = np.log(clipped) / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def reliability(
    y_true: np.ndarray, scores: np.ndarray, task: str, n_bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per confidence bin: accuracy and count, the bin edges, and the ECE (top-label; multi-label:
    every label's decision)."""
    if task == Task.MULTI_LABEL:
        confidence, correct = np.maximum(scores, 1 - scores).ravel(), ((scores > 0.5) == (y_true == 1)).ravel()
    else:
        decided = predicted_labels(scores, task)
        confidence, correct = scores[np.arange(len(decided)), decided], decided == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    accuracy = np.bincount(bins, correct, n_bins) / np.maximum(count, 1)
    return accuracy, count, edges, calibration_error(confidence, correct, n_bins)


def reliability_bars(ax, y_true: np.ndarray, scores: np.ndarray, task: str, label: str) -> float:
    """Draw the accuracy of each confidence bin as bars on ``ax``; returns the ECE."""
    accuracy, count, edges, ece = reliability(y_true, scores, task)
    ax.bar(
        edges[:-1],
        np.where(count > 0, accuracy, 0),
        width=edges[1],
        align="edge",
        edgecolor="white",
        color="tab:blue",
        label=label,
    )
    return ece


def reliability_diagram(
    y_true: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, task: str, out: Path, temperature: float
) -> list[Path]:
    """Accuracy against confidence in equal-width bins, before and after temperature scaling, with
    each side's ECE (top-label; multi-label: every label's decision)."""
    figure, axes = subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, scores, title in ((axes[0], raw, "before"), (axes[1], calibrated, f"after (T = {temperature:.3g})")):
        ece = reliability_bars(ax, y_true, scores, task, "accuracy in the bin")
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
        ax.set_title(f"{title}: ECE {ece:.4f}", fontsize=10)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="upper left")
    figure.suptitle("Reliability on the test split (temperature fitted on validation)")
    return save_figure(figure, out)


def conformal_figure(report: dict, set_sizes: np.ndarray, out: Path) -> list[Path]:
    """The conformal sets on the test split: how many images get a set of each size, and each class's
    coverage with its 95 % interval against the target (``report``: :func:`.conformal.coverage_report`)."""
    n_classes = len(report["by_class"])
    figure, (sizes_ax, classes_ax) = subplots(
        1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1, max(1.5, n_classes / 5)]}
    )
    counts = np.bincount(set_sizes.astype(int), minlength=n_classes + 1)
    sizes_ax.bar(np.arange(len(counts)), counts, color="tab:blue")
    sizes_ax.set_xlabel("classes in the set")
    sizes_ax.set_ylabel("test images")
    sizes_ax.set_xticks(np.arange(len(counts)))
    sizes_ax.set_title(f"set sizes (mean {report['mean_size']:.2f})", fontsize=10)
    names = list(report["by_class"])
    coverage = np.array([report["by_class"][name]["coverage"] for name in names])
    low = np.array([report["by_class"][name]["ci"][0] for name in names])
    high = np.array([report["by_class"][name]["ci"][1] for name in names])
    below = high < report["target"]
    positions = np.arange(len(names))
    classes_ax.bar(positions, coverage, color=np.where(below, "tab:red", "tab:green"))
    classes_ax.errorbar(
        positions, coverage, yerr=[coverage - low, high - coverage], fmt="none", color="black", capsize=3
    )
    classes_ax.set_xticks(positions, [name if len(name) <= 20 else name[:19] + "…" for name in names])
    classes_ax.axhline(report["target"], linestyle="--", color="grey", label=f"target {report['target']:.0%}")
    classes_ax.set_ylim(0, 1.02)
    classes_ax.set_ylabel("coverage (95 % interval)")
    matplotlib.artist.setp(classes_ax.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
    classes_ax.legend(fontsize=8, loc="lower right")
    classes_ax.set_title(
        f"coverage per class (all: {report['coverage']:.3f}, red: interval below the target)", fontsize=10
    )
    figure.suptitle("Conformal prediction sets on the test split (calibrated on validation)")
    return save_figure(figure, out)


def robustness_figure(rows: list[dict], summary: dict, out: Path) -> list[Path]:
    """Test accuracy against severity (0: clean), one line per corruption, one panel per family
    (``rows``: :attr:`.robustness.RobustnessResult.rows`)."""
    clean = rows[0]["acc"]
    families = list(dict.fromkeys(row["family"] for row in rows[1:]))
    figure, axes = subplots(1, len(families), figsize=(3.4 * len(families), 3.6), sharey=True, squeeze=False)
    low = min(row["acc"] for row in rows)
    for ax, family in zip(axes[0], families, strict=True):
        names = list(dict.fromkeys(row["corruption"] for row in rows[1:] if row["family"] == family))
        for name in names:
            points = [(0, clean)] + [(r["severity"], r["acc"]) for r in rows[1:] if r["corruption"] == name]
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name.replace("_", " "))
        ax.axhline(clean, linestyle="--", color="grey", linewidth=0.8)
        ax.set_title(family, fontsize=10)
        ax.set_xlabel("severity")
        ax.set_xticks(range(0, max(summary["severities"]) + 1))
        ax.set_ylim(max(0.0, low - 0.05), min(1.0, clean + 0.03))
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel("test accuracy")
    figure.suptitle(
        f"Accuracy under corruption (clean {clean:.3f}, dashed; mean corrupted {summary['corrupted_acc']:.3f}, "
        f"mCE {summary['mce']:.3f})"
    )
    return save_figure(figure, out)
