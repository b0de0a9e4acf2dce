"""A run folder as one object: the names of its files and their readers, the bundle (``best.pt``)
and the last training state (``last.pt``). Checkpoints are plain dicts of tensors and primitives,
saved atomically and loaded with ``weights_only=True`` so that loading never runs pickled code.
torch is imported only to read or write a checkpoint, so that an ONNX prediction starts without it."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict

from ..errors import CheckpointError, first_line
from ..io import atomic_path

if TYPE_CHECKING:
    import numpy as np

    from ..config import TrainConfig
    from ..models.registry import ModelSpec  # models import torch; these records are read without it

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions.csv"
BEST_FILE = "best.pt"
LAST_FILE = "last.pt"
ONNX_FILE = "model.onnx"
PTE_FILE = "model.pte"  # ExecuTorch
RELIABILITY_FIGURE = "reliability"  # .png and .svg
CONFORMAL_FIGURE = "conformal"  # .png and .svg
ROBUSTNESS_TABLE = "robustness.csv"
ROBUSTNESS_IMAGES = "robustness.npz"  # per test image: right or wrong, clean and under each corruption
ROBUSTNESS_FIGURE = "robustness"  # .png and .svg
MODEL_CARD_FILE = "MODEL_CARD.md"
EXPLAIN_EVALUATION_FILE = "explain/evaluation.json"  # what explain --evaluate measured
# Any of these in a folder means a run was (or is being) written there.
RUN_FILES = (CONFIG_FILE, METRICS_FILE, BEST_FILE, LAST_FILE)


class Preprocessing(TypedDict):
    """How an image becomes the model's input: resized to ``size``, ``channels``, then (x - mean) / std."""

    size: int
    channels: int
    mean: list[float]
    std: list[float]


class DatasetRecord(TypedDict):
    """What a model was trained on: enough to name its outputs and to check its data again."""

    name: str
    task: str  # a :class:`~medclassify.tasks.Task` value
    class_names: list[str]
    md5: str
    orientation: str


class BundleMetadata(TypedDict):
    """The part of ``best.pt`` (and of an exported model) that describes the model without the run
    folder; ``calibration`` and ``operating_point`` appear once they were fitted."""

    model: ModelSpec
    preprocessing: Preprocessing
    dataset: DatasetRecord
    medclassify_version: str
    epoch: NotRequired[int]
    val_metrics: NotRequired[dict]
    test_metrics: NotRequired[dict]
    calibration: NotRequired[dict]
    operating_point: NotRequired[dict]
    conformal: NotRequired[dict]
    ensemble: NotRequired[list[dict]]  # an ensemble's members: their source, MD5 and test figures
    temperature_in_graph: NotRequired[bool]  # an exported model's
    checkpoint_md5: NotRequired[str]
    format: NotRequired[str]


CHECKPOINT_FORMAT = "medclassify.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Save a checkpoint dict with this format's version, atomically (serialised in memory first)."""
    import torch

    buffer = io.BytesIO()  # serialised first, so that a full disk is an OSError of the write below
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, **payload}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, loaded with ``weights_only=True``; a missing,
    foreign or damaged file is one :class:`CheckpointError` line."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file fails in many ways inside the unpickler
        raise CheckpointError(f"{path}: not a readable medclassify checkpoint ({first_line(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a medclassify checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if data.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer medclassify (format {data['format_version']}); upgrade to read it"
        )
    return data


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV file as dicts of strings; a missing or unreadable file is one
    :class:`CheckpointError` line naming it."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the run folder") from None
    except (OSError, ValueError, csv.Error) as exc:  # ValueError: not text
        raise CheckpointError(f"{path}: not a readable CSV file ({first_line(exc)})") from None


@dataclass(frozen=True)
class RunDir:
    """The files of one run folder. Readers raise :class:`CheckpointError` naming the file."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def predictions_path(self) -> Path:
        return self.path / PREDICTIONS_FILE

    @property
    def best_path(self) -> Path:
        return self.path / BEST_FILE

    @property
    def last_path(self) -> Path:
        return self.path / LAST_FILE

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    def has_run_files(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def is_finished(self) -> bool:
        """Training ended and the test split was evaluated (``metrics.json`` exists)."""
        return self.metrics_path.is_file()

    def record(self) -> dict:
        """``config.json``: the config, seed, versions, environment and data checksums of the run."""
        if not self.config_path.is_file():
            raise CheckpointError(f"{self.path}: not a medclassify run folder (no {CONFIG_FILE})")
        try:
            return json.loads(self.config_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{self.config_path}: not a readable run config ({exc})") from None

    def config(self, data_dir: str | None = None) -> TrainConfig:
        """The TrainConfig the run was trained with; ``data_dir``: where the data are now, if they
        moved since training."""
        from ..config import TrainConfig

        record = self.record()
        try:
            config = TrainConfig.from_dict(record["config"], source=str(self.config_path))
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{self.config_path}: not a readable run config ({exc})") from None
        if data_dir:
            config.data_dir = data_dir
        return config

    def metrics(self) -> dict:
        """``metrics.json``: the val and test figures and what calibration and robustness added."""
        if not self.is_finished():
            raise CheckpointError(f"{self.path}: no {METRICS_FILE}; the run has not finished")
        try:
            metrics = json.loads(self.metrics_path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.metrics_path}: not readable ({first_line(exc)})") from None
        if not isinstance(metrics, dict) or not all(isinstance(metrics.get(s), dict) for s in ("val", "test")):
            raise CheckpointError(f"{self.metrics_path}: expected a mapping with the 'val' and 'test' figures")
        return metrics

    def explanation_evaluation(self) -> dict | None:
        """What ``explain --evaluate`` measured (``explain/evaluation.json``), None before it ran."""
        path = self.path / EXPLAIN_EVALUATION_FILE
        if not path.is_file():
            return None
        try:
            evaluation = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not readable ({first_line(exc)})") from None
        if not isinstance(evaluation, dict) or not isinstance(evaluation.get("methods"), list):
            raise CheckpointError(f"{path}: expected explain --evaluate's record with its 'methods'")
        return evaluation

    def history(self) -> list[dict]:
        """``history.csv``: one row per epoch, every figure a number."""
        rows = read_csv(self.history_path)
        for number, row in enumerate(rows, start=2):  # line 1 is the header
            for column, value in row.items():
                if column is None or not _is_number(value):
                    raise CheckpointError(
                        f"{self.history_path}: line {number}, column {column}: expected a number, got {value!r}"
                    )
        if not rows:
            raise CheckpointError(f"{self.history_path}: holds no epoch")
        return rows

    def predictions(self) -> list[dict]:
        return read_csv(self.predictions_path)

    def test_scores(self, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
        """Test labels (multi-label: N x labels of 0/1) and probabilities from ``predictions.csv``."""
        import numpy as np

        rows = self.predictions()
        try:
            probs = np.array([[float(v) for k, v in row.items() if k.startswith("prob_")] for row in rows])
            if multi_label:
                truth = np.zeros_like(probs, dtype=int)
                for i, row in enumerate(rows):
                    truth[i, [int(j) for j in row["true"].split(";") if j]] = 1
            else:
                truth = np.array([int(row["true"]) for row in rows])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"{self.predictions_path}: not a predictions table ({first_line(exc)})") from None
        n_classes = probs.shape[1] if probs.ndim == 2 else 0
        if not rows or not n_classes or not np.isfinite(probs).all() or (truth.ndim == 1 and not (truth >= 0).all()):
            raise CheckpointError(f"{self.predictions_path}: expected one row per test image with finite probabilities")
        if truth.ndim == 1 and truth.max() >= n_classes:
            raise CheckpointError(f"{self.predictions_path}: a true class {truth.max()} beyond the {n_classes} classes")
        return truth, probs

    def bundle(self) -> dict:
        """``best.pt``: the model, its preprocessing, dataset facts, calibration and operating point."""
        return load_checkpoint(self.best_path)

    def last_state(self) -> dict:
        """``last.pt``: everything an interrupted run resumes from."""
        return load_checkpoint(self.last_path)


def _is_number(text: str | None) -> bool:
    try:
        float(text)  # type: ignore[arg-type]  # None is caught below
    except (TypeError, ValueError):
        return False
    return True


def result_files(checkpoint: str) -> tuple[str, str]:
    """The metrics and predictions files of an evaluation: the best checkpoint's are the run's own
    (``metrics.json``, ``predictions.csv``); another checkpoint's are kept apart beside them."""
    if checkpoint == "best":
        return METRICS_FILE, PREDICTIONS_FILE
    return f"metrics_{checkpoint}.json", f"predictions_{checkpoint}.csv"
