"""The study's results table: one row per experiment (seeds pooled), read from the run folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..evaluation.metrics import accuracy, auc_score, macro_f1
from ..io import atomic_path, write_csv
from .study import Study

METRICS = {"acc": accuracy, "f1_macro": macro_f1, "auc": auc_score}
LABELS = {"acc": "accuracy", "f1_macro": "macro-F1", "auc": "macro-AUC"}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_predictions(run_dir: Path, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    rows = _read_csv(run_dir / "predictions.csv")
    probs = np.array([[float(v) for k, v in row.items() if k.startswith("prob_")] for row in rows])
    if multi_label:
        truth = np.zeros_like(probs, dtype=int)
        for i, row in enumerate(rows):
            truth[i, [int(j) for j in row["true"].split(";") if j]] = 1
    else:
        truth = np.array([int(row["true"]) for row in rows])
    return truth, probs


def bootstrap_ci(y_true: np.ndarray, scores: list[np.ndarray], task: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """95 % percentile intervals of each test metric, resampling test images with replacement; with
    several seeds the same resample is applied to every seed's predictions and the metric averaged."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    draws = {name: [] for name in METRICS}
    for _ in range(n_boot):
        index = rng.integers(0, n, n)
        for name, metric in METRICS.items():
            draws[name].append(np.mean([metric(y_true[index], s[index], task) for s in scores]))
    return {name: tuple(float(q) for q in np.nanpercentile(values, [2.5, 97.5])) for name, values in draws.items()}


def collect_results(study: Study, study_dir: str | Path, n_boot: int = 1000) -> list[dict]:
    """One row per (dataset, size, model) with the seeds' mean and standard deviation."""
    study_dir = Path(study_dir)
    groups: dict[tuple, list[Path]] = {}
    for config in study.configs(study_dir):
        groups.setdefault((config.dataset_name, config.size, config.model), []).append(config.run_dir())
    rows = []
    for (dataset, size, model), run_dirs in groups.items():
        done = [d for d in run_dirs if (d / "metrics.json").is_file()]
        if not done:
            continue
        metrics = [json.loads((d / "metrics.json").read_text()) for d in done]
        records = [json.loads((d / "config.json").read_text()) for d in done]
        task = records[0]["data"]["task"]
        history = [_read_csv(d / "history.csv") for d in done]
        predictions = [read_predictions(d, task == "multi-label, binary-class") for d in done]
        row = {"experiment": f"{dataset}_{size}_{model}", "dataset": dataset, "size": size, "model": model,
               "seeds": " ".join(str(r["config"]["seed"]) for r in records), "n_test": metrics[0]["test"]["n"]}
        for name in METRICS:
            values = [m["test"][name] for m in metrics]
            row[f"test_{name}"] = float(np.mean(values))
            row[f"test_{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        for name, (low, high) in bootstrap_ci(predictions[0][0], [p[1] for p in predictions], task, n_boot).items():
            row[f"test_{name}_ci_low"], row[f"test_{name}_ci_high"] = low, high
        row["best_epoch"] = float(np.mean([m["best_epoch"] for m in metrics]))
        row["train_seconds"] = float(np.mean([sum(float(e["seconds"]) for e in h) for h in history]))
        row["images_per_s"] = float(np.mean([np.mean([float(e["images_per_s"]) for e in h]) for h in history]))
        rows.append(row)
    return rows


def write_results_table(rows: list[dict], study_dir: str | Path) -> None:
    study_dir = Path(study_dir)
    header = list(rows[0]) if rows else ["experiment"]
    write_csv(study_dir / "results.csv", header, ([f"{v:.6g}" if isinstance(v, float) else v for v in r.values()] for r in rows))
    lines = [
        "| dataset | size | model | seeds | " + " | ".join(f"test {LABELS[m]} (95% CI)" for m in METRICS) + " | best epoch | training time | images/s |",
        "|---|---|---|---|" + "---|" * len(METRICS) + "---|---|---|",
    ]
    for r in rows:
        cells = []
        for m in METRICS:
            spread = f" ± {r[f'test_{m}_std']:.4f}" if len(r["seeds"].split()) > 1 else ""
            cells.append(f"{r[f'test_{m}']:.4f}{spread} ({r[f'test_{m}_ci_low']:.4f}–{r[f'test_{m}_ci_high']:.4f})")
        lines.append(f"| {r['dataset']} | {r['size']} | {r['model']} | {r['seeds']} | " + " | ".join(cells)
                     + f" | {r['best_epoch']:.1f} | {r['train_seconds']:.0f} s | {r['images_per_s']:.0f} |")
    with atomic_path(study_dir / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n\nMean ± standard deviation over seeds; 95% CI: bootstrap over test images.\n")
