"""A run's exported model (``model.onnx``, ``model.int8.onnx``, ``model.pte``, ...) evaluated on the
run's validation and test splits through the runtime a device would use, written beside the run's
own figures as ``metrics_FILE.json`` and ``predictions_FILE.csv``."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..evaluation.metrics import classification_metrics
from ..evaluation.results import write_results
from ..io import folder_lock
from ..runs import EvaluationResult, load_run_data
from ..runs.files import RunDir
from .bundle import EXPORTS_RECORD, exports_record
from .predictor import Predictor


def evaluate_export(run_dir: str | Path, model: str, data_dir: str | None = None) -> EvaluationResult:
    """Evaluate one of the files ``medclassify export`` wrote in a run folder, with its own runtime.

    Args:
        run_dir: the run folder.
        model: the exported file's name in it, as ``exports.json`` records it (``model.int8.onnx``).
        data_dir: where the run's data are now, if they moved since training.

    Returns:
        The validation and test figures and the files written (``metrics_MODEL.json``, ``predictions_MODEL.csv``).
    """
    run = RunDir(run_dir)
    records = exports_record(run.path)
    if model not in records or Path(model).name != model:
        recorded = ", ".join(sorted(records)) or "none yet"
        raise ConfigError(
            f"model {model!r}: expected the name of a file 'medclassify export' wrote in {run.path} "
            f"(recorded in {EXPORTS_RECORD}: {recorded})",
            parameters=("model",),
        )
    predictor = Predictor.from_run(run.path / model)  # refused if it changed since its export
    data = load_run_data(run.config(data_dir))
    metrics: dict[str, dict] = {}
    outputs = {}
    with folder_lock(run.path, "evaluate"):
        for split in ("val", "test"):
            y_true = data.splits[split].labels.numpy()
            probabilities = predictor.predict_pixels(data.splits[split].images.numpy())
            metrics[split] = dict(classification_metrics(y_true, probabilities, data.task, data.class_names))
            outputs[split] = (y_true, probabilities)
        files = (f"metrics_{model}.json", f"predictions_{model}.csv")
        extra = {"model": model, "format": records[model].get("format"), "runtime": predictor.backend.name}
        write_results(run.path, metrics, outputs, data, extra, *files, medmnist_files=False)
    return EvaluationResult(model, metrics["val"], metrics["test"], [run.path / name for name in files])
