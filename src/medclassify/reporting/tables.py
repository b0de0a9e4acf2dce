"""The results table of a study: ``results.csv`` (every figure, full precision) and ``results.md``
(the metrics with their intervals), and the cell format the report shares."""

from __future__ import annotations

from pathlib import Path

from ..evaluation.stats import METRICS
from ..io import atomic_path, write_csv
from .texts import METRIC_NAMES

LABELS = METRIC_NAMES["en"]


# between a report cell's estimate and its interval: a line break, so that a narrow column breaks there
# and never inside a number or a range (report.md and report.html render it as one)
LINE = "\n"


def metric_cell(row: dict, metric: str, separator: str = " ") -> str:
    """A results-table cell: the test metric, ± its std over seeds when there are several, and its
    95% interval (after ``separator``)."""
    spread = (
        f" ± {row[f'test_{metric}_std']:.4f}" if len(str(row["seeds"]).split()) > 1 and not row.get("ensemble") else ""
    )
    interval = f"({row[f'test_{metric}_ci_low']:.4f}–{row[f'test_{metric}_ci_high']:.4f})"
    return f"{row[f'test_{metric}']:.4f}{spread}{separator}{interval}"


def _number(value: float) -> str:
    """Whole numbers as integers (a mean best epoch of 3.0 is 3), others with one decimal."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def write_results_table(rows: list[dict], study_dir: str | Path) -> None:
    """Write results.csv (one row per experiment, every column) into ``study_dir``."""
    study_dir = Path(study_dir)
    header = list(rows[0]) if rows else ["experiment"]
    write_csv(
        study_dir / "results.csv",
        header,
        ([f"{v:.6g}" if isinstance(v, float) else v for v in r.values()] for r in rows),
    )
    lines = [
        "| dataset | size | model | seeds | "
        + " | ".join(f"test {LABELS[m]} (95% CI)" for m in METRICS)
        + " | best epoch | training time | images/s |",
        "|---|---|---|---|" + "---|" * len(METRICS) + "---|---|---|",
    ]
    for r in rows:
        seeds = f"{r['seeds']} (ensemble)" if r.get("ensemble") else r["seeds"]
        lines.append(
            f"| {r['dataset']} | {r['size']} | {' · '.join(filter(None, (r['model'], r.get('variant'))))} | {seeds} | "
            + " | ".join(metric_cell(r, m) for m in METRICS)
            + f" | {_number(r['best_epoch'])} | {r['train_seconds']:.0f} s | {r['images_per_s']:.0f} |"
        )
    with atomic_path(study_dir / "results.md") as tmp:
        tmp.write_text(
            "\n".join(lines) + "\n\nMean ± standard deviation over seeds; 95% CI: bootstrap over seeds and test images "
            "(one seed: over test images only, the spread between runs is unknown)."
            + (
                " Rows marked (ensemble): the mean of the seeds' test probabilities taken as one model; "
                "95% CI over test images."
                if any(r.get("ensemble") for r in rows)
                else ""
            )
            + "\n"
        )
