"""The study's figures, each saved as PNG (150 dpi) and SVG, with one colour per experiment."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from ..evaluation.figures import reliability, reliability_bars, rescaled, save_figure  # noqa: E402
from ..tasks import Task  # noqa: E402
from .texts import METRIC_NAMES, dataset_title, experiment_title, shorten  # noqa: E402

METRIC_LABELS = METRIC_NAMES["en"]
FPR_GRID = np.linspace(0.0, 1.0, 201)


def experiment_colours(experiments) -> dict[str, tuple]:
    """One colour per experiment name, the same in every figure of a study."""
    palette = plt.get_cmap("tab10" if len(experiments) <= 10 else "tab20")
    return {e.name: palette(i % palette.N) for i, e in enumerate(experiments)}


def roc_curves(y_true: np.ndarray, y_score: np.ndarray, task: str, class_names: list[str]) -> dict[str, np.ndarray]:
    """TPR on a common FPR grid per class (binary: the positive class) and their macro average."""
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
        curves[name] = np.interp(FPR_GRID, fpr, tpr)
    curves["macro-average"] = np.mean(list(curves.values()), axis=0) if curves else np.zeros_like(FPR_GRID)
    return curves


def _first_seed_scores(experiment) -> np.ndarray:
    return experiment.side.scores[0]


def loss_curves(experiments, out: Path) -> list[Path]:
    """Train and validation loss per epoch, one panel per experiment, shared axes (first seed;
    the band spans the seeds when there are several)."""
    columns = min(4, len(experiments))
    rows = int(np.ceil(len(experiments) / columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 3.2 * rows), sharex=True, sharey=True, squeeze=False, layout="constrained"
    )
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
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(experiments) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("loss")
    axes.flat[0].legend()
    figure.suptitle("Training and validation loss")
    return save_figure(figure, out / "loss_curves")


def _metric_bars(ax, experiments, colours) -> None:
    metrics = list(METRIC_LABELS)
    width = 0.8 / len(experiments)
    for i, e in enumerate(experiments):
        x = np.arange(len(metrics)) + (i - (len(experiments) - 1) / 2) * width
        means = [e.mean(m) for m in metrics]
        ax.bar(
            x,
            means,
            width,
            yerr=[e.std(m) for m in metrics],
            color=colours[e.name],
            label=shorten(experiment_title(e), 40),
        )
        for xi, value in zip(x, means):
            ax.text(xi, value + 0.01, f"{value:.3f}", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(np.arange(len(metrics)), [METRIC_LABELS[m] for m in metrics])
    ax.set_ylim(0.0, 1.15)  # from 0, so that bar heights compare as the scores do; the top leaves room for the labels
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("test score")
    ax.grid(axis="y", alpha=0.3)


def _legend_below(ax, columns: int = 2) -> None:
    """The legend under the axes, where it cannot cover a bar or a curve."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=columns, frameon=False)


def dataset_comparison(dataset: str, experiments, colours, out: Path) -> list[Path]:
    """ROC curves (macro average bold, classes thin) of each experiment on one dataset side by side,
    and a bar chart of its test metrics."""
    figure, axes = plt.subplots(
        1, len(experiments) + 1, figsize=(4.2 * (len(experiments) + 1), 4), layout="constrained"
    )
    for ax, e in zip(axes, experiments):
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
        ax.set_title(f"{e.size} px · {e.model}", fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=6, loc="lower right")
    _metric_bars(axes[-1], experiments, colours)
    _legend_below(axes[-1], columns=1)
    axes[-1].set_title("test metrics", fontsize=10)
    figure.suptitle(f"{dataset_title(dataset)}: ROC curves and test metrics")
    return save_figure(figure, out / f"{dataset}_comparison")


def all_experiments(experiments, colours, out: Path) -> list[Path]:
    """The macro-average ROC of every experiment in one plot, and grouped metric bars."""
    figure, (roc_ax, bar_ax) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    for e in experiments:
        curves = roc_curves(e.side.y_true, _first_seed_scores(e), e.task, e.class_names)
        roc_ax.plot(
            FPR_GRID,
            curves["macro-average"],
            color=colours[e.name],
            lw=2,
            label=f"{shorten(experiment_title(e), 40)} (AUC {e.mean('auc'):.3f})",
        )
    roc_ax.plot([0, 1], [0, 1], ":", color="grey")
    roc_ax.set_xlabel("false positive rate")
    roc_ax.set_ylabel("true positive rate")
    roc_ax.set_title("macro-average ROC")
    roc_ax.legend(fontsize=7, loc="lower right")
    _metric_bars(bar_ax, experiments, colours)
    bar_ax.set_title("test metrics")
    _legend_below(bar_ax)
    return save_figure(figure, out / "all_experiments")


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
    figure, ax = plt.subplots(figsize=(side + 1, side), layout="constrained")
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
    ax.set_title(f"{experiment.name.replace('_', ' · ')} (seed {experiment.seeds[0]})", fontsize=10)
    figure.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    return save_figure(figure, out / f"confusion_{experiment.name}")


def study_figures(experiments, out: Path, robustness: list[dict] | None = None) -> dict[str, list[Path]]:
    """Every figure of the report (``robustness``: :func:`..experiments.results.robustness_rows`, when
    the runs were tested under corruptions); returns {figure key: [png, svg]}."""
    out.mkdir(parents=True, exist_ok=True)
    colours = experiment_colours(experiments)
    figures = {"loss_curves": loss_curves(experiments, out)}
    for dataset in dict.fromkeys(e.dataset for e in experiments):
        figures[f"{dataset}_comparison"] = dataset_comparison(
            dataset, [e for e in experiments if e.dataset == dataset], colours, out
        )
    figures["all_experiments"] = all_experiments(experiments, colours, out)
    figures["reliability"] = studyreliability(experiments, out)
    for e in experiments:
        figures[f"confusion_{e.name}"] = confusion(e, out)
    if robustness:
        figures["robustness"] = robustness_comparison(robustness, colours, out)
    return figures


def robustness_comparison(rows: list[dict], colours: dict, out: Path) -> list[Path]:
    """Each experiment's test accuracy against corruption severity (0: clean; each severity the mean
    over its corruptions and seeds)."""
    figure, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for row in rows:
        ax.plot(
            [0, *row["severities"]],
            row["acc_by_severity"],
            marker="o",
            color=colours.get(row["experiment"]),
            label=f"{shorten(row['experiment'], 48)} (mean corrupted {row['corrupted_acc']:.3f})",
        )
    ax.set_xlabel("corruption severity (0: clean)")
    ax.set_ylabel("test accuracy")
    ax.set_xticks(range(0, max(max(r["severities"]) for r in rows) + 1))
    _legend_below(ax, columns=1)
    figure.suptitle("Accuracy under corruption (mean over corruptions and seeds)")
    return save_figure(figure, out / "robustness")


def studyreliability(experiments, out: Path) -> list[Path]:
    """Each experiment's test reliability (first seed), and after its run's fitted temperature
    where ``medclassify calibrate`` stored one."""
    columns = min(4, len(experiments))
    rows = int(np.ceil(len(experiments) / columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 3.6 * rows), sharey=True, squeeze=False, layout="constrained"
    )
    for ax, e in zip(axes.flat, experiments):
        scores = e.side.scores[0]
        ece = reliability_bars(ax, e.side.y_true, scores, e.task, "as trained")
        title = f"ECE {ece:.4f}"
        temperature = (e.metrics[0].get("calibrated") or {}).get("temperature")
        if temperature:
            after, after_count, edges, after_ece = reliability(
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
        ax.set_xlabel("confidence")
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes.flat[len(experiments) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    figure.suptitle("Reliability on the test split (first seed)")
    return save_figure(figure, out / "reliability")
