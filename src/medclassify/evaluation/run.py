"""Re-evaluate a saved run folder: ``medclassify evaluate RUN_DIR``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..data import LoadedDataset, Normalization
from ..errors import CheckpointError
from ..io import folder_lock
from ..models import create_model
from ..training.checkpoint import load_checkpoint
from ..training.config import TrainConfig
from ..training.environment import select_device
from ..training.trainer import load_run_data
from .results import evaluate_model, write_results


def read_run_config(run_dir: Path, data_dir: str | None = None) -> TrainConfig:
    """The TrainConfig a run folder was trained with (its ``config.json``); ``data_dir``: where the
    data are now, if they moved since training."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir}: not a medclassify run folder (no config.json)")
    try:
        record = json.loads(config_path.read_text())
        config = TrainConfig.from_dict(record["config"], source=str(config_path))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{config_path}: not a readable run config ({exc})") from None
    if data_dir:
        config.data_dir = data_dir
    return config


def result_files(checkpoint: str) -> tuple[str, str]:
    """The metrics and predictions files of an evaluation: the best checkpoint's are the run's own
    (``metrics.json``, ``predictions.csv``); another checkpoint's are kept apart beside them."""
    if checkpoint == "best":
        return "metrics.json", "predictions.csv"
    return f"metrics_{checkpoint}.json", f"predictions_{checkpoint}.csv"


def check_bundle_fits(state: dict, data: LoadedDataset, path: Path) -> None:
    """The checkpoint's model must take the data's images and predict its classes."""
    spec, dataset = state["model"], state["dataset"]
    found = {"classes": (spec["num_classes"], data.num_classes), "channels": (spec["in_channels"], data.channels),
             "image size": (spec["image_size"], data.size), "task": (dataset["task"], data.task),
             "class names": (list(dataset["class_names"]), list(data.class_names))}
    wrong = [f"{what} {have!r} vs {need!r}" for what, (have, need) in found.items() if have != need]
    if wrong:
        raise CheckpointError(f"{path}: the model does not fit the run's data ({'; '.join(wrong)}); nothing was written")


def evaluate_run(
    run_dir: str | Path, checkpoint: str = "best", data_dir: str | None = None, device: str = "auto"
) -> dict:
    """Rebuild the run's data and model, evaluate the checkpoint on val and test, and write its
    :func:`result_files` (the best checkpoint rewrites ``metrics.json`` and ``predictions.csv``).
    Returns the metrics."""
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise CheckpointError(f"--checkpoint {checkpoint}: expected best or last")
    config = read_run_config(run_dir, data_dir)
    with folder_lock(run_dir, "evaluate"):
        return _evaluate(run_dir, config, checkpoint, device)


def _evaluate(run_dir: Path, config: TrainConfig, checkpoint: str, device: str) -> dict:
    path = run_dir / f"{checkpoint}.pt"
    state = load_checkpoint(path)
    target = select_device(device)
    data = load_run_data(config)
    check_bundle_fits(state, data, path)
    if data.source["md5"] != state["dataset"]["md5"]:
        warnings.warn(f"the data differ from those the run was trained on (MD5 {state['dataset']['md5']} -> {data.source['md5']})", stacklevel=2)
    spec = state["model"]
    model = create_model(spec["name"], spec["in_channels"], spec["num_classes"], spec["image_size"])
    model.load_state_dict(state["model_state"])
    model.to(target)
    prep = state["preprocessing"]
    normalization = Normalization(tuple(prep["mean"]), tuple(prep["std"]))
    metrics, outputs = evaluate_model(model, data, normalization, target, config.eval_batch_size,
                                      tta_orientation=data.orientation if config.tta else None)
    extra = {"checkpoint": f"{checkpoint}.pt", "epoch": state.get("epoch"), "select_metric": config.select_metric, "tta": config.tta}
    if checkpoint == "best":
        extra["best_epoch"] = state.get("epoch")
    write_results(run_dir, metrics, outputs, data, extra, *result_files(checkpoint), medmnist_files=checkpoint == "best")
    return metrics
