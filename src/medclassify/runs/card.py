"""``MODEL_CARD.md``: a run described in Hugging Face's model-card format (Mitchell et al., 2019).

YAML front matter (library, pipeline tag, the data's licence, tags, datasets, metrics and a
``model-index`` with the test figures), then intended and out-of-scope use, the training data with
its citation and licence, the recipe, the test results with intervals, calibration, prediction
sets and robustness when the run has them, limitations, and how to use the model. Every sentence is
filled from the run's own records (``config.json``, ``metrics.json``, ``predictions.csv``) or is
true of every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import __version__
from ..data.catalog import FOLDER_NAME, DatasetInfo, get_dataset_info
from ..defaults import CARD_RESAMPLES
from ..io import atomic_path
from ..tasks import Task
from .files import MODEL_CARD_FILE, RunDir

MEDMNIST_CITATION = (
    "J. Yang, R. Shi, D. Wei et al., MedMNIST v2 - a large-scale lightweight benchmark for 2D and 3D "
    "biomedical image classification, Scientific Data 10, 41 (2023)"
)
# medmnist.INFO's licence names -> the Hub's licence identifiers
HUB_LICENSES = {"CC BY 4.0": "cc-by-4.0", "CC BY-NC 4.0": "cc-by-nc-4.0", "CC0 (generated)": "cc0-1.0"}
RECIPE_KEYS = (
    "model",
    "pretrained",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "schedule",
    "loss",
    "label_smoothing",
    "class_weights",
    "sampler",
    "augment",
    "mix",
    "ema_decay",
    "tta",
    "select_metric",
    "seed",
)
CORRUPTION_NAMES = {"medmnistc": "MedMNIST-C", "generic": "generic"}
METRIC_LABELS = {
    "acc": ("accuracy", "Test accuracy"),
    "f1_macro": ("f1", "Test macro-F1"),
    "auc": ("roc_auc", "Test macro-AUC"),
}


def _test_intervals(run: RunDir, task: str) -> dict:
    from ..evaluation.stats import Side, bootstrap_interval

    y_true, scores = run.test_scores(task == Task.MULTI_LABEL)
    return bootstrap_interval(Side(y_true, [scores], Task(task)), CARD_RESAMPLES)


def _front_matter(record: dict, metrics: dict, name: str, info: DatasetInfo | None) -> dict:
    data, config = record["data"], record["config"]
    dataset = data["name"]
    return {
        "library_name": "medclassify",
        "pipeline_tag": "image-classification",
        "license": HUB_LICENSES.get(info.license, "other") if info else "other",
        "tags": ["medical-imaging", "image-classification", "medclassify", dataset, config["model"]]
        + (["medmnist"] if info is not None and not info.synthetic else []),
        "datasets": [dataset],
        "metrics": [METRIC_LABELS[m][0] for m in METRIC_LABELS],
        "model-index": [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": {"name": f"{dataset} ({data['size']} px)", "type": dataset, "split": "test"},
                        "metrics": [
                            {"type": kind, "value": round(float(metrics["test"][m]), 4), "name": label}
                            for m, (kind, label) in METRIC_LABELS.items()
                        ],
                    }
                ],
            }
        ],
    }


def _info(record: dict) -> DatasetInfo | None:
    """The catalog entry of the run's dataset; None for an image folder (its name is the folder's)."""
    flag = (record["config"].get("dataset") or FOLDER_NAME).lower()
    return get_dataset_info(flag) if flag != FOLDER_NAME else None


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def _early_end(metrics: dict, record: dict) -> str:
    """The sentence saying why training ended before its planned epochs, or nothing."""
    stopped_by = metrics.get("stopped_by")
    if stopped_by == "early_stopping":
        reason = f"validation {metrics.get('select_metric')} stopped improving (early stopping)"
    elif stopped_by == "time_budget":
        reason = (
            f"the run went slower than planned and its {record['time_budget']['budget_s']:g} s time budget ran short"
        )
    else:
        return ""
    return f" Training ended after epoch {metrics.get('epochs_run')} of {record['config']['epochs']}: {reason}."


def model_card(run_dir: str | Path) -> str:
    """The run's model card as Markdown with YAML front matter."""
    run = RunDir(run_dir)
    record, metrics = run.record(), run.metrics()
    data, config, spec = record["data"], record["config"], record["model"]
    dataset, task, size = data["name"], data["task"], data["size"]
    info = _info(record)
    licence = info.license if info else None
    name = run.path.resolve().name
    test = metrics["test"]
    intervals = _test_intervals(run, task)
    front = _front_matter(record, metrics, name, info)
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [
        f"# {spec['name']} on {dataset} ({size} px)",
        "",
        f"A `{spec['name']}` CNN ({spec['parameters']:,} parameters) trained with medclassify "
        f"{record.get('environment', {}).get('packages', {}).get('medclassify', __version__)} to classify "
        f"{size}×{size} px {'colour' if data['channels'] == 3 else 'grey'} images of {dataset} into "
        f"{len(data['class_names'])} classes ({task}): {', '.join(data['class_names'])}.",
        "",
        "## Intended use",
        "",
        f"Research and teaching: a baseline for comparing methods on {dataset} and on images prepared the same "
        "way, and an example of a trained and documented model.",
        "",
        "**Out of scope.** This model is not a medical device. It must not be used to diagnose, treat, triage "
        "or screen patients, nor on images that do not come from the same kind of source as its training data.",
        "",
        "## Training data",
        "",
    ]
    split_sizes = data["source"].get("split_sizes", {})
    splits = ", ".join(f"{split} {split_sizes[split]:,}" for split in ("train", "val", "test") if split in split_sizes)
    if info is None:
        lines += [
            f"An image folder (MD5 over its files {data['md5']}), split into {splits} images; "
            "its source and licence are the user's.",
        ]
    else:
        lines += [
            f"{info.description}",
            "",
            f"Splits: {splits} images (MedMNIST's official split). Licence: {licence}"
            + (" (non-commercial use only)." if "-NC" in (licence or "") else "."),
            f"File MD5: {data['md5']}.",
        ]
        if not info.synthetic:
            lines += ["", f"Sources: {info.source}; {MEDMNIST_CITATION}."]
    lines += ["", "## Training recipe", ""]
    lines += _table(["setting", "value"], [[key, config.get(key)] for key in RECIPE_KEYS if key in config])
    lines += [
        "",
        f"Best epoch {metrics.get('best_epoch')} of {metrics.get('epochs_run')} (selected on validation "
        f"{metrics.get('select_metric')}).{_early_end(metrics, record)} The full configuration, versions and data "
        "checksums are in the run's `config.json`.",
        "",
        f"## Results on the test split ({test['n']:,} images)",
        "",
    ]
    lines += _table(
        ["metric", "value", "95% CI"],
        [
            [label.removeprefix("Test "), f"{test[m]:.4f}", f"{intervals[m][0]:.4f}–{intervals[m][1]:.4f}"]
            for m, (_, label) in METRIC_LABELS.items()
        ],
    )
    lines += [
        "",
        f"Intervals: percentile bootstrap over the test images ({CARD_RESAMPLES} resamples); one trained model, "
        "so the spread between training runs is not included.",
    ]
    if test.get("per_class"):
        lines += ["", "Per class:", ""]
        lines += _table(
            ["class", "precision", "recall", "F1", "AUC", "images"],
            [
                [c, *(f"{r[k]:.3f}" if k in r else "–" for k in ("precision", "recall", "f1", "auc")), r["support"]]
                for c, r in test["per_class"].items()
            ],
        )
    lines += _calibration_lines(metrics)
    lines += explanation_lines(run.explanation_evaluation())
    lines += _limitations(record, metrics, info)
    lines += [
        "",
        "## How to use",
        "",
        "```bash",
        "pip install medclassify",
        f"medclassify predict {name} image.png        # PNG, JPEG, TIFF, DICOM",
        f"medclassify serve {name}                    # HTTP API and web page",
        "```",
        "",
        "```python",
        "from medclassify.inference import Predictor",
        "",
        f'predictor = Predictor.from_run("{name}")',
        'print(predictor.predict(["image.png"]).records())',
        "```",
        "",
        f"Images are resized to {size} px and normalised with the stored mean and standard deviation "
        f"({', '.join(f'{m:.4f}' for m in record['preprocessing']['mean'])} / "
        f"{', '.join(f'{s:.4f}' for s in record['preprocessing']['std'])}).",
        "",
    ]
    return "\n".join(lines)


def _calibration_lines(metrics: dict) -> list[str]:
    lines = []
    calibrated = metrics.get("calibrated")
    if calibrated and "temperature" in calibrated:
        lines += [
            "",
            "## Calibration",
            "",
            f"Temperature scaling fitted on the validation split: T = {calibrated['temperature']:.4g}; test expected "
            f"calibration error {calibrated['uncalibrated']['test']['ece']:.4f} before, "
            f"{calibrated['test']['ece']:.4f} after. `predict` and `serve` apply it.",
        ]
    point = metrics.get("operating_point")
    if point:
        test = point["test"]
        lines += [
            "",
            f"Operating point for '{point['positive_class']}' ({point['rule']}, chosen on validation): threshold "
            f"{point['threshold']:.4g}; test sensitivity {test['sensitivity']:.4f}, specificity {test['specificity']:.4f}.",
        ]
    conformal = metrics.get("conformal")
    if conformal:
        test = conformal["test"]
        below = [c for c, r in test["by_class"].items() if r["ci"][1] < test["target"]]
        lines += [
            "",
            "## Prediction sets",
            "",
            f"Conformal prediction sets ({conformal['score']}, calibrated on validation) for {test['target']:.0%} "
            f"coverage: test coverage {test['coverage']:.4f} ({test['ci'][0]:.4f}–{test['ci'][1]:.4f}), mean set "
            f"size {test['mean_size']:.2f}."
            + (
                f" Coverage falls short of the target for: {', '.join(below)}."
                if below
                else " No class's coverage interval lies below the target."
            ),
        ]
    robustness = metrics.get("robustness")
    if robustness:
        lines += [
            "",
            "## Robustness",
            "",
            f"Under {len(robustness['ce'])} {CORRUPTION_NAMES[robustness['corruptions']]} corruptions at severities "
            f"{', '.join(map(str, robustness['severities']))}: test accuracy {robustness['corrupted_acc']:.4f} "
            f"({robustness['corrupted_acc_ci'][0]:.4f}–{robustness['corrupted_acc_ci'][1]:.4f}) against "
            f"{robustness['clean_acc']:.4f} clean; mCE {robustness['mce']:.4f}; the hardest corruption is "
            f"{robustness['worst_corruption']} (error {robustness['ce'][robustness['worst_corruption']]:.4f}).",
        ]
    return lines


def _interval(estimate: dict) -> str:
    return f"{estimate['mean']:.3f} ({estimate['low']:.3f}–{estimate['high']:.3f})"


@dataclass
class ExplanationVerdict:
    """What an explanation evaluation supports, each list in the evaluation's ranking order."""

    beats_random_deletion: list[str]  # deletion interval wholly below the random map's
    beats_random_insertion: list[str]  # insertion interval wholly above the random map's
    fails_sanity: list[str]
    trusted: list[str]  # beats the random map on deletion and passes the sanity check


def explanation_verdict(evaluation: dict) -> ExplanationVerdict:
    """The verdict on ``explain --evaluate``'s record: which methods the intervals separate from a
    random map, which fail the sanity check, and which are left trustworthy."""
    methods = {m["method"]: m for m in evaluation["methods"]}
    ranking = evaluation["ranking"]
    random_deletion, random_insertion = evaluation["random_deletion_area"], evaluation["random_insertion_area"]
    below = [n for n in ranking if methods[n]["deletion_area"]["high"] < random_deletion["low"]]
    failed = [n for n in ranking if not methods[n]["sanity"]["passed"]]
    return ExplanationVerdict(
        beats_random_deletion=below,
        beats_random_insertion=[n for n in ranking if methods[n]["insertion_area"]["low"] > random_insertion["high"]],
        fails_sanity=failed,
        trusted=[n for n in below if n not in failed],
    )


def explanation_lines(evaluation: dict | None) -> list[str]:
    """ "Which explanations can be trusted", from what ``explain --evaluate`` wrote (nothing when it
    has not run): every sentence says what the numbers show and nothing else."""
    if evaluation is None:
        return []
    methods = {m["method"]: m for m in evaluation["methods"]}
    random_deletion, random_insertion = evaluation["random_deletion_area"], evaluation["random_insertion_area"]
    lines = [
        "",
        "## Which explanations can be trusted",
        "",
        f"Measured with `medclassify explain RUN --evaluate` on {evaluation['images']} class-stratified test images "
        f"(seed {evaluation['seed']}). Deletion: the area under the explained class's probability as the pixels "
        "the map ranks first are blurred away (lower is more faithful); insertion: as they are revealed on the "
        "blurred image (higher is more faithful); a random map's areas are "
        f"{_interval(random_deletion)} and {_interval(random_insertion)}. ROAD: the mean of (least relevant first "
        "− most relevant first) / 2 of the probability's change under noisy imputation (higher is more faithful). "
        "Sanity: the rank correlation of each map with the map of the same model with every layer re-initialised; "
        "below 0.5 passes. Methods in the order of their mean rank over deletion, insertion and ROAD:",
        "",
    ]
    rows = []
    for name in evaluation["ranking"]:
        m = methods[name]
        sanity = "passes" if m["sanity"]["passed"] else "fails"
        rows.append(
            [
                name,
                _interval(m["deletion_area"]),
                _interval(m["insertion_area"]),
                f"{m['road_combined']:.3f}",
                f"{m['sanity']['final']['mean']:.2f}, {sanity}",
                f"{m['seconds_per_image']:.4f}",
            ]
        )
    lines += _table(["method", "deletion", "insertion", "ROAD", "sanity", "s/image"], rows)
    verdict = explanation_verdict(evaluation)
    below, above, failed = verdict.beats_random_deletion, verdict.beats_random_insertion, verdict.fails_sanity
    lines += [
        "",
        (
            f"Deletion separates {', '.join(below)} from the random map (intervals apart)"
            if below
            else "No method's deletion interval lies below the random map's"
        )
        + "; "
        + (
            f"insertion separates {', '.join(above)}."
            if above
            else "no method's insertion interval lies above the random map's: insertion separates no method from "
            "a random map for this model."
        ),
        (
            f"{', '.join(failed)} {'fails' if len(failed) == 1 else 'fail'} the sanity check: "
            f"{'its' if len(failed) == 1 else 'their'} maps stay alike when the model's weights are random, so "
            f"{'it shows' if len(failed) == 1 else 'they show'} the image more than the model."
            if failed
            else "Every method passes the sanity check."
        ),
        (
            f"Most trustworthy here: {verdict.trusted[0]} (the first method in the order above that both beats the "
            "random map on deletion and passes the sanity check)."
            if verdict.trusted
            else "No method both beats the random map on deletion and passes the sanity check: read these maps as "
            "hypotheses, not as evidence."
        ),
    ]
    return lines


def _limitations(record: dict, metrics: dict, info: DatasetInfo | None) -> list[str]:
    data = record["data"]
    lines = [
        "",
        "## Limitations",
        "",
        f"- Trained and tested on {data['size']}×{data['size']} px images; fine detail that larger images show is "
        "not available to it.",
        "- Tested only on the test split of the same collection as its training images. Its accuracy on images "
        "from other hospitals, devices, protocols or populations has not been measured and may be lower.",
    ]
    conformal = metrics.get("conformal")
    if conformal and conformal["test"]["ci"][1] < conformal["test"]["target"]:
        lines.append(
            "- Its prediction sets cover less than their target on the test split: the test images differ from "
            "the validation images they were calibrated on."
        )
    if info is not None and "-NC" in info.license:
        lines.append(f"- The training data's licence ({info.license}) allows non-commercial use only.")
    return lines


def check_card_records(run_dir: str | Path) -> None:
    """Read the records a model card is written from (config, metrics, test predictions), so that a
    command that rewrites the card stops on a damaged one before it changes anything."""
    run = RunDir(run_dir)
    record = run.record()
    run.metrics()
    task = record.get("data", {}).get("task") if isinstance(record, dict) else None
    run.test_scores(task == Task.MULTI_LABEL)


def write_model_card(run_dir: str | Path) -> Path:
    """Write (or rewrite) the run's ``MODEL_CARD.md`` atomically; returns its path."""
    path = Path(run_dir) / MODEL_CARD_FILE
    text = model_card(run_dir)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
