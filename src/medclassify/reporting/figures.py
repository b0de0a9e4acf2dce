"""The study's figures, each saved as PNG (150 dpi) and SVG, with one colour per experiment."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from ..evaluation.figures import LEGEND_POINTS, reliability, rescaled, save_figure, subplots
from ..tasks import Task
from ..text import shorten
from .texts import METRIC_NAMES, dataset_title, experiment_title, row_title

METRIC_LABELS = METRIC_NAMES["en"]
FPR_GRID = np.linspace(0.0, 1.0, 201)
# panels per row of a grid figure: two 4-inch panels at 150 dpi fit the report's page width without
# shrinking, so its text keeps the size it was drawn at
GRID_COLUMNS = 2
# a reliability bin with fewer test images than this is drawn hatched: its accuracy is too noisy to read
MIN_BIN_IMAGES = 10


def experiment_colours(experiments) -> dict[str, tuple]:
    """One colour per experiment name, the same in every figure of a study (its seed ensemble
    shares it)."""
    palette = matplotlib.colormaps["tab10" if len(experiments) <= 10 else "tab20"]
    return {e.name: palette(i % palette.N) for i, e in enumerate(experiments)}


def roc_curves(y_true: np.ndarray, y_score: np.ndarray, task: str, class_names: list[str]) -> dict[str, np.ndarray]:
    """TPR on a common FPR grid (0 to 1, from (0, 0)) per class (binary: the positive class) and
    their macro average."""
    if task == Task.BINARY:
        columns = {class_names[-1]: (y_true == 1, y_score[:, -1])}
    elif task == Task.MULTI_LABEL:
        columns = {name: (y_true[:, i] == 1, y_score[:, i]) for i, name in enumerate(class_names)}
    else:
        columns = {name: (y_true == i, y_score[:, i]) for i, name in enumerate(class_names)}
    curves = {}
    for name, (positive, score) in columns.items():
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, score)
        curve = np.interp(FPR_GRID, fpr, tpr)
        # at FPR 0 interp returns the highest TPR reached there; every ROC curve starts at (0, 0)
        curve[0] = 0.0
        curves[name] = curve
    curves["macro-average"] = np.mean(list(curves.values()), axis=0) if curves else np.zeros_like(FPR_GRID)
    return curves


def _first_seed_scores(experiment) -> np.ndarray:
    return experiment.side.scores[0]


def loss_curves(experiments, out: Path) -> list[Path]:
    """Train and validation loss per epoch, one panel per experiment, shared axes (the mean over
    seeds; the band spans the seeds when there are several)."""
    columns = min(GRID_COLUMNS, len(experiments))
    rows = int(np.ceil(len(experiments) / columns))
    figure, axes = subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, e in zip(axes.flat, experiments):
        for key, style, label in (("train_loss", "-", "train"), ("val_loss", "--", "validation")):
            curves = np.array([[float(r[key]) for r in h] for h in e.histories if len(h) == len(e.histories[0])])
            epochs = np.arange(1, curves.shape[1] + 1)
            ax.plot(
                epochs,
                curves.mean(axis=0),
                style,
                marker="o",
                markersize=3,
                label=label,  # markers: one epoch is a point
                color="tab:blue" if key == "train_loss" else "tab:orange",
            )
            if len(curves) > 1:
                ax.fill_between(
                    epochs,
                    curves.min(axis=0),
                    curves.max(axis=0),
                    alpha=0.2,
                    color="tab:blue" if key == "train_loss" else "tab:orange",
                )
        ax.set_title(experiment_title(e), fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(experiments) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("loss")
    axes.flat[0].legend(fontsize=LEGEND_POINTS)
    figure.suptitle("Training and validation loss")
    return save_figure(figure, out / "loss_curves")


def _legend_below(ax, columns: int = 2) -> None:
    """The legend under the axes, where it cannot cover a point or a curve."""
    ax.legend(fontsize=LEGEND_POINTS, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=columns, frameon=False)


def dataset_roc(dataset: str, experiments, colours, out: Path) -> list[Path]:
    """ROC curves (macro average bold, classes thin; first seed) of each experiment on one dataset
    side by side."""
    columns = min(GRID_COLUMNS, len(experiments))
    rows = int(np.ceil(len(experiments) / columns))
    figure, axes = subplots(rows, columns, figsize=(4.4 * columns, 4.4 * rows), squeeze=False)
    for ax in axes.flat[len(experiments) :]:
        ax.set_visible(False)
    for ax, e in zip(axes.flat, experiments):
        curves = roc_curves(e.side.y_true, _first_seed_scores(e), e.task, e.class_names)
        for name, tpr in curves.items():
            if name != "macro-average":
                ax.plot(FPR_GRID, tpr, lw=0.8, alpha=0.6, label=shorten(name, 24))
        ax.plot(
            FPR_GRID,
            curves["macro-average"],
            lw=2.5,
            color=colours[e.name],
            label=f"macro-average (AUC {e.mean('auc'):.3f})",
        )
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_title(shorten(experiment_title(e), 44), fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=LEGEND_POINTS, loc="lower right")
    figure.suptitle(f"{dataset_title(dataset)}: ROC curves on the test split")
    return save_figure(figure, out / f"{dataset}_roc")


def metric_chart(rows: list[dict], colours: dict, out: Path) -> list[Path]:
    """Every experiment's test metrics (``rows``: results and ensemble rows) as dots with their 95%
    interval as whiskers, one panel per metric. The axis spans the intervals, not 0 to 1: the
    differences a study measures (often 0.01) would be invisible on bars drawn from 0."""
    titles = [row_title(r) for r in rows]
    figure, axes = subplots(
        1,
        len(METRIC_LABELS),
        figsize=(9, 0.45 * len(rows) + 1.8),
        sharey=True,
    )
    positions = np.arange(len(rows))[::-1]  # the first row at the top, as in the tables
    for ax, metric in zip(axes, METRIC_LABELS):
        low = np.array([r[f"test_{metric}_ci_low"] for r in rows])
        high = np.array([r[f"test_{metric}_ci_high"] for r in rows])
        value = np.array([r[f"test_{metric}"] for r in rows])
        for y, r, v, lo, hi in zip(positions, rows, value, low, high):
            colour = colours.get(r["experiment"].removesuffix("_ensemble"), "black")
            ax.errorbar(
                v,
                y,
                xerr=[[v - lo], [hi - v]],
                fmt="D" if r.get("ensemble") else "o",
                color=colour,
                markerfacecolor="white" if r.get("ensemble") else colour,
                capsize=3,
            )
            ax.annotate(f"{v:.3f}", (v, y), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=8)
        span = np.nanmax(high) - np.nanmin(low)
        margin = max(span * 0.15, 0.005)
        ax.set_xlim(max(0.0, np.nanmin(low) - margin), min(1.0, np.nanmax(high) + margin))
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(METRIC_LABELS[metric], fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions, [shorten(title, 60) for title in titles], fontsize=8)
    ensembles = " (hollow diamonds: seed ensembles)" if any(r.get("ensemble") for r in rows) else ""
    figure.supxlabel("test score (each axis zoomed to its intervals)", fontsize=10)
    figure.suptitle(f"Test metrics with 95% intervals{ensembles}")
    return save_figure(figure, out / "test_metrics")


def confusion(experiment, out: Path) -> list[Path]:
    """Row-normalised confusion matrix (first seed) with class names, counts in the cells."""
    matrix = np.array(experiment.metrics[0]["test"]["confusion_matrix"])
    if matrix.ndim == 3:  # multi-label: one 2x2 matrix per label; show the per-label recall table
        matrix = np.array([[m[0][0], m[0][1]] for m in matrix] + [[m[1][0], m[1][1]] for m in matrix])
    names = (
        experiment.class_names
        if matrix.shape[0] == len(experiment.class_names)
        else [str(i) for i in range(matrix.shape[0])]
    )
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = max(4.5, 0.55 * len(names) + 2)
    figure, ax = subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    short = [shorten(n, 22) for n in names]
    ax.set_xticks(range(len(names)), short, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), short)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                f"{matrix[i, j]}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if shares[i, j] > 0.5 else "black",
            )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{experiment_title(experiment)} (seed {experiment.seeds[0]})", fontsize=10)
    figure.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    return save_figure(figure, out / f"confusion_{experiment.name}")


def study_figures(
    experiments, rows: list[dict], out: Path, robustness: list[dict] | None = None
) -> dict[str, list[Path]]:
    """Every figure of the report (``rows``: the results and ensemble rows; ``robustness``:
    :func:`..experiments.results.robustness_rows`, when the runs were tested under corruptions);
    returns {figure key: [png, svg]}."""
    out.mkdir(parents=True, exist_ok=True)
    colours = experiment_colours(experiments)
    figures = {"loss_curves": loss_curves(experiments, out)}
    for dataset in dict.fromkeys(e.dataset for e in experiments):
        figures[f"{dataset}_roc"] = dataset_roc(dataset, [e for e in experiments if e.dataset == dataset], colours, out)
    figures["test_metrics"] = metric_chart(rows, colours, out)
    figures["reliability"] = study_reliability(experiments, out)
    for e in experiments:
        figures[f"confusion_{e.name}"] = confusion(e, out)
    if robustness:
        figures["robustness"] = robustness_comparison(robustness, colours, out)
    return figures


def robustness_comparison(rows: list[dict], colours: dict, out: Path) -> list[Path]:
    """Each experiment's test accuracy against corruption severity (0: clean; each severity the mean
    over its corruptions and seeds)."""
    figure, ax = subplots(figsize=(6.4, 4.2))
    for row in rows:
        ax.plot(
            [0, *row["severities"]],
            row["acc_by_severity"],
            marker="o",
            color=colours.get(row["experiment"]),
            label=f"{shorten(row_title(row), 48)} (mean corrupted {row['corrupted_acc']:.3f})",
        )
    ax.set_xlabel("corruption severity (0: clean)")
    ax.set_ylabel("test accuracy")
    ax.set_xticks(range(0, max(max(r["severities"]) for r in rows) + 1))
    _legend_below(ax, columns=1)
    figure.suptitle("Accuracy under corruption (mean over corruptions and seeds)")
    return save_figure(figure, out / "robustness")


def study_reliability(experiments, out: Path) -> list[Path]:
    """Each experiment's test reliability (first seed), and after its run's fitted temperature
    where ``medclassify calibrate`` stored one; under each, the number of test images per bin (as
    scikit-learn's calibration display shows them), and bins with fewer than ``MIN_BIN_IMAGES``
    hatched."""
    columns = min(GRID_COLUMNS, len(experiments))
    rows = int(np.ceil(len(experiments) / columns))
    figure = Figure(figsize=(4 * columns, 4.6 * rows), layout="constrained")
    grid = figure.add_gridspec(2 * rows, columns, height_ratios=[3, 1] * rows)
    for i, e in enumerate(experiments):
        row, column = divmod(i, columns)
        ax = figure.add_subplot(grid[2 * row, column])
        counts_ax = figure.add_subplot(grid[2 * row + 1, column], sharex=ax)
        scores = e.side.scores[0]
        accuracy, count, edges, ece = reliability(e.side.y_true, scores, e.task)
        sparse = (count > 0) & (count < MIN_BIN_IMAGES)
        for chosen, style in (
            (count >= MIN_BIN_IMAGES, {"label": "as trained"}),
            (sparse, {"hatch": "///", "alpha": 0.35, "label": f"bin < {MIN_BIN_IMAGES} images"}),
        ):
            if chosen.any():
                ax.bar(
                    edges[:-1][chosen],
                    accuracy[chosen],
                    width=edges[1],
                    align="edge",
                    edgecolor="white",
                    color="tab:blue",
                    **style,
                )
        title = f"plug-in ECE {ece:.4f}"
        temperature = (e.metrics[0].get("calibrated") or {}).get("temperature")
        if temperature:
            after, after_count, _, after_ece = reliability(
                e.side.y_true, rescaled(scores, temperature, e.task == Task.MULTI_LABEL), e.task
            )
            ax.step(
                edges,
                np.append(np.where(after_count > 0, after, np.nan), np.nan),
                where="post",
                color="tab:orange",
                label=f"T = {temperature:.3g}",
            )
            title += f" → {after_ece:.4f}"
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_title(f"{shorten(experiment_title(e), 40)}\n{title}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelbottom=False)
        ax.legend(fontsize=LEGEND_POINTS, loc="upper left")
        counts_ax.bar(edges[:-1], np.maximum(count, 0), width=edges[1], align="edge", color="grey", edgecolor="white")
        counts_ax.set_yscale("symlog", linthresh=1)  # 3 images and 3000 on one strip
        counts_ax.axhline(MIN_BIN_IMAGES, color="tab:red", lw=0.8, ls="--")
        counts_ax.set_xlabel("confidence")
        if column == 0:
            ax.set_ylabel("accuracy")
            counts_ax.set_ylabel("images")
    figure.suptitle("Reliability on the test split (first seed), with the images in each bin")
    return save_figure(figure, out / "reliability")
