"""A study's experiments as read back from their run folders, and the results table.

An *experiment* is one (dataset, size, model, variant) cell of the grid; its seeds are pooled.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..defaults import BOOTSTRAP_RESAMPLES
from ..evaluation.metrics import REPORTED_CALIBRATION_METRICS
from ..evaluation.robustness import bootstrap_means
from ..evaluation.stats import METRICS, Side, bootstrap_calibration, bootstrap_interval
from ..runs import BEST_FILE, ROBUSTNESS_IMAGES, RunDir
from ..tasks import Task
from .study import Study


@dataclass
class Experiment:
    """One cell of a study (dataset, size, model) and the runs of its seeds, read back from their folders."""

    dataset: str
    size: int
    model: str
    run_dirs: list[Path]
    metrics: list[dict]  # metrics.json per seed
    records: list[dict]  # config.json per seed
    histories: list[list[dict]]  # history.csv rows per seed
    side: Side  # test labels and every seed's probabilities
    variant: str | None = None  # the study's variant (named training settings), if it has variants
    variant_settings: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.dataset}_{self.size}_{self.model}{'_' + self.variant if self.variant else ''}"

    @property
    def seeds(self) -> list[int]:
        return [r["config"]["seed"] for r in self.records]

    @property
    def task(self) -> str:
        return self.records[0]["data"]["task"]

    @property
    def class_names(self) -> list[str]:
        return self.records[0]["data"]["class_names"]

    def mean(self, metric: str) -> float:
        """The test figure averaged over seeds (NaN where a run's record predates the figure)."""
        return float(np.mean([m["test"].get(metric, np.nan) for m in self.metrics]))

    def std(self, metric: str) -> float:
        values = [m["test"].get(metric, np.nan) for m in self.metrics]
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def load_experiments(study: Study, study_dir: str | Path) -> list[Experiment]:
    """Every grid cell with at least one complete run, in the study's order."""
    groups: dict[tuple, list[Path]] = {}
    for cell, config in zip(study.cells(), study.configs(Path(study_dir)), strict=True):
        key = (config.dataset_name, config.size, config.model, cell["variant"])
        groups.setdefault(key, []).append(config.run_dir())
    experiments = []
    for (dataset, size, model, variant), run_dirs in groups.items():
        finished = {d: metrics for d in run_dirs if (metrics := _best_metrics(d)) is not None}
        done = list(finished)
        if not done:
            continue
        records = [RunDir(d).record() for d in done]
        multi_label = records[0]["data"]["task"] == Task.MULTI_LABEL
        predictions = [RunDir(d).test_scores(multi_label) for d in done]
        experiments.append(
            Experiment(
                dataset,
                size,
                model,
                done,
                metrics=list(finished.values()),
                records=records,
                histories=[RunDir(d).history() for d in done],
                side=Side(predictions[0][0], [p for _, p in predictions], records[0]["data"]["task"]),
                variant=variant,
                variant_settings=study.variants.get(variant, {}),
            )
        )
    return experiments


def _best_metrics(run_dir: Path) -> dict | None:
    """The run's metrics.json when it holds the best checkpoint's test figures; anything else in
    the folder (a hand-written or foreign file) is left out with a warning."""
    path = RunDir(run_dir).metrics_path
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
        usable = (
            isinstance(metrics, dict)
            and metrics.get("checkpoint", BEST_FILE) == BEST_FILE
            and isinstance(metrics.get("test"), dict)
            and all(k in metrics["test"] for k in METRICS)
        )
    except ValueError:
        usable = False
    if not usable:
        warnings.warn(
            f"{path}: not the best checkpoint's test metrics; this run is left out of the results", stacklevel=3
        )
        return None
    return metrics


def results_rows(experiments: list[Experiment], n_boot: int = BOOTSTRAP_RESAMPLES) -> list[dict]:
    """One row per experiment: seed mean and standard deviation, bootstrap CI, timing."""
    rows = []
    for e in experiments:
        row = {
            "experiment": e.name,
            "dataset": e.dataset,
            "size": e.size,
            "model": e.model,
            "variant": e.variant or "",
            "seeds": " ".join(map(str, e.seeds)),
            "n_test": len(e.side.y_true),
            "ensemble": False,
        }
        intervals = {**bootstrap_interval(e.side, n_boot), **bootstrap_calibration(e.side, n_boot)}
        for name in METRICS:
            row[f"test_{name}"], row[f"test_{name}_std"] = e.mean(name), e.std(name)
        # from the saved predictions, as the intervals are: runs recorded before these figures existed have them too
        every_image = np.arange(len(e.side.y_true))
        per_seed = [e.side.resampled_calibration(every_image, [k]) for k in range(e.side.n_seeds)]
        for name in REPORTED_CALIBRATION_METRICS:
            values = [seed[name] for seed in per_seed]
            row[f"test_{name}"], row[f"test_{name}_std"] = (
                float(np.mean(values)),
                float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            )
        for name in (*METRICS, *REPORTED_CALIBRATION_METRICS):
            row[f"test_{name}_ci_low"], row[f"test_{name}_ci_high"] = intervals[name]
        class_seeds = [e.side.resampled(every_image, [k]) for k in range(e.side.n_seeds)]
        for i, class_name in enumerate(e.class_names if e.task != Task.BINARY else []):
            values = [seed[f"class_auc_{i}"] for seed in class_seeds]
            key = f"test_auc_{class_name}"
            row[key], row[f"{key}_std"] = (
                float(np.mean(values)),
                float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            )
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = intervals[f"class_auc_{i}"]
        epochs = [m["best_epoch"] for m in e.metrics if isinstance(m.get("best_epoch"), (int, float))]
        row["best_epoch"] = float(np.mean(epochs)) if epochs else float("nan")
        row["train_seconds"] = float(np.mean([sum(float(r["seconds"]) for r in h) for h in e.histories]))
        row["images_per_s"] = float(np.mean([np.mean([float(r["images_per_s"]) for r in h]) for h in e.histories]))
        rows.append(row)
    return rows


def ensemble_rows(experiments: list[Experiment], rows: list[dict], n_boot: int = BOOTSTRAP_RESAMPLES) -> list[dict]:
    """For each experiment with several seeds, its seed ensemble as one model: the mean of the seeds'
    test probabilities, with 95% intervals over the test images (one model: no spread over seeds).
    ``rows``: the experiments' :func:`results_rows`, whose columns these rows share."""
    ensembles = []
    for e, base in zip(experiments, rows, strict=True):
        if e.side.n_seeds < 2:
            continue
        side = Side(e.side.y_true, [np.mean(e.side.scores, axis=0)], e.side.task)
        every_image = np.arange(len(side.y_true))
        point = {**side.resampled(every_image, [0]), **side.resampled_calibration(every_image, [0])}
        intervals = {**bootstrap_interval(side, n_boot), **bootstrap_calibration(side, n_boot)}
        row = {**base, "experiment": f"{e.name}_ensemble", "ensemble": True}
        for name in (*METRICS, *REPORTED_CALIBRATION_METRICS):
            row[f"test_{name}"], row[f"test_{name}_std"] = point[name], 0.0
            row[f"test_{name}_ci_low"], row[f"test_{name}_ci_high"] = intervals[name]
        for i, class_name in enumerate(e.class_names if e.task != Task.BINARY else []):
            key = f"test_auc_{class_name}"
            row[key], row[f"{key}_std"] = point[f"class_auc_{i}"], 0.0
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = intervals[f"class_auc_{i}"]
        row["train_seconds"] = base["train_seconds"] * e.side.n_seeds  # every member was trained
        ensembles.append(row)
    return ensembles


def conformal_rows(experiments: list[Experiment]) -> list[dict]:
    """For each experiment whose runs were conformal-calibrated: the score, the target, the test
    coverage (mean and standard deviation over seeds; Wilson interval over every seed's test images
    together), the mean set size, the share of empty sets and the classes whose pooled coverage
    interval lies below the target."""
    rows = []
    for e in experiments:
        records = [m["conformal"] for m in e.metrics if "conformal" in m]
        if not records:
            continue
        tests = [r["test"] for r in records]
        coverages = [t["coverage"] for t in tests]
        below = []
        for name in tests[0]["by_class"]:
            parts = [t["by_class"][name] for t in tests]
            if _pooled([(round(p["coverage"] * p["n"]), p["n"]) for p in parts])["ci"][1] < tests[0]["target"]:
                below.append(name)
        rows.append(
            {
                "experiment": e.name,
                "score": records[0]["score"] + (" (Mondrian)" if records[0].get("mondrian") else ""),
                "target": tests[0]["target"],
                "coverage": float(np.mean(coverages)),
                "coverage_sd": float(np.std(coverages, ddof=1)) if len(coverages) > 1 else None,
                "ci": _pooled([(round(t["coverage"] * t["n"]), t["n"]) for t in tests])["ci"],
                "mean_size": float(np.mean([t["mean_size"] for t in tests])),
                "empty_share": float(np.mean([t["empty_share"] for t in tests])),
                "classes_below_target": below,
            }
        )
    return rows


def _pooled(parts: list[tuple[int, int]]) -> dict:
    """A proportion over every seed's images together, with its 95% Wilson interval."""
    from ..evaluation.threshold import wilson_interval

    hits, total = sum(h for h, _ in parts), sum(n for _, n in parts)
    return {"value": hits / total if total else float("nan"), "ci": list(wilson_interval(hits, total)), "n": total}


def _disjoint(a: dict, b: dict) -> bool:
    return a["ci"][1] < b["ci"][0] or b["ci"][1] < a["ci"][0]


def operating_point_rows(experiments: list[Experiment]) -> list[dict]:
    """For each experiment whose runs chose an operating point on validation: the rule, the
    positive class, the thresholds, and sensitivity and specificity on the validation and the test
    split at that threshold (every seed's images together, Wilson intervals); ``shifted`` when a
    test figure's interval and the validation one do not overlap."""
    rows = []
    for e in experiments:
        points = [m["operating_point"] for m in e.metrics if "operating_point" in m]
        if not points:
            continue
        row = {
            "experiment": e.name,
            "rule": points[0]["rule"],
            "positive_class": points[0]["positive_class"],
            "thresholds": [p["threshold"] for p in points],
        }
        for split in ("val", "test"):
            row[f"{split}_sensitivity"] = _pooled([(p[split]["tp"], p[split]["tp"] + p[split]["fn"]) for p in points])
            row[f"{split}_specificity"] = _pooled([(p[split]["tn"], p[split]["tn"] + p[split]["fp"]) for p in points])
        row["shifted"] = any(_disjoint(row[f"val_{m}"], row[f"test_{m}"]) for m in ("sensitivity", "specificity"))
        rows.append(row)
    return rows


def split_shift_rows(experiments: list[Experiment]) -> list[dict]:
    """For each single-label experiment: validation and test accuracy (every seed's images together,
    Wilson intervals) and whether the two intervals are disjoint, i.e. the test images behave
    unlike the validation images the checkpoint (and any temperature or threshold) was chosen on."""
    rows = []
    for e in experiments:
        if e.task == Task.MULTI_LABEL or not all("val" in m and "n" in m["val"] for m in e.metrics):
            continue
        row: dict[str, Any] = {"experiment": e.name}
        for split in ("val", "test"):
            row[split] = _pooled([(round(m[split]["acc"] * m[split]["n"]), m[split]["n"]) for m in e.metrics])
        row["shifted"] = _disjoint(row["val"], row["test"])
        rows.append(row)
    return rows


def robustness_images(experiment: Experiment) -> list[dict] | None:
    """Per seed, the run's robustness record and per test image: right or wrong clean, and the share
    of corrupted variants it got right (``robustness.npz``); None unless every seed has them."""
    seeds = []
    for run_dir, metrics in zip(experiment.run_dirs, experiment.metrics, strict=True):
        path = Path(run_dir) / ROBUSTNESS_IMAGES
        if "robustness" not in metrics or not path.is_file():
            return None
        with np.load(path) as stored:
            seeds.append({"record": metrics["robustness"], "clean": stored["clean"], "corrupted": stored["corrupted"]})
    return seeds


def robustness_rows(experiments: list[Experiment], n_boot: int = BOOTSTRAP_RESAMPLES) -> list[dict]:
    """For each experiment whose runs were tested under corruptions: clean and mean corrupted test
    accuracy and their difference, each with a 95 % bootstrap interval over seeds and test images,
    the mCE and relative mCE (means over seeds), the hardest corruption and the mean accuracy per
    severity (for the figure)."""
    rows = []
    for e in experiments:
        seeds = robustness_images(e)
        if seeds is None:
            continue
        records = [s["record"] for s in seeds]
        clean = [s["clean"] for s in seeds]
        corrupted = [s["corrupted"].mean(axis=1) for s in seeds]
        clean_acc, clean_ci = bootstrap_means(clean, n_boot)
        corrupted_acc, corrupted_ci = bootstrap_means(corrupted, n_boot)
        drop, drop_ci = bootstrap_means([c - k for c, k in zip(clean, corrupted, strict=True)], n_boot)
        ce = {name: float(np.mean([r["ce"][name] for r in records])) for name in records[0]["ce"]}
        severities = records[0]["severities"]
        by_severity = np.mean([s["corrupted"].mean(axis=0).reshape(-1, len(severities)) for s in seeds], axis=(0, 1))
        rows.append(
            {
                "experiment": e.name,
                "dataset": e.dataset,
                "size": e.size,
                "model": e.model,
                "variant": e.variant,
                "corruptions": records[0]["corruptions"],
                "n_corruptions": len(ce),
                "clean_acc": clean_acc,
                "clean_acc_ci": clean_ci,
                "corrupted_acc": corrupted_acc,
                "corrupted_acc_ci": corrupted_ci,
                "acc_drop": drop,
                "acc_drop_ci": drop_ci,
                "mce": float(np.mean([r["mce"] for r in records])),
                "relative_mce": float(np.mean([r["relative_mce"] for r in records])),
                "worst_corruption": max(ce, key=lambda name: ce[name]),
                "worst_ce": max(ce.values()),
                "severities": severities,
                "acc_by_severity": [clean_acc, *map(float, by_severity)],
                "per_seed_corrupted": corrupted,
                "per_seed_clean": clean,
            }
        )
    return rows


def explanation_records(experiments: list[Experiment]) -> dict[str, tuple[int, dict]]:
    """Per experiment name, the seed and ``explain --evaluate`` record of its first run that has
    one (a study measures each experiment's first seed); experiments without any are left out."""
    records = {}
    for e in experiments:
        for run_dir, seed in zip(e.run_dirs, e.seeds, strict=True):
            evaluation = RunDir(run_dir).explanation_evaluation()
            if evaluation is not None:
                records[e.name] = (seed, evaluation)
                break
    return records
