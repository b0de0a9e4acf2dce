"""Experiment tracking: the run folder stays the source of truth, and TensorBoard and MLflow get the
same numbers as they are written (``--track tensorboard mlflow``) or afterwards from the folder
(``medclassify track``).

* TensorBoard: event files in ``RUN/tensorboard/``: per epoch the train and validation loss, the
  validation ACC/AUC/macro-F1, the learning rate and images/s; at the end the hyper-parameters and test
  figures through the HParams plugin and the loss curves and confusion matrix as images.
* MLflow: a run (in a study: a child of the study's run) with the TrainConfig as parameters, the same
  metrics per epoch with their step, tags for dataset, model, seed and variant, the test figures, and
  the run folder's files as artefacts, the model bundle (``best.pt``) under ``bundle/`` and as the
  run's MLflow model ``model`` (pyfunc, loaded by medclassify's own code: ``inference/mlflow_model.py``). The store is
  ``MLFLOW_TRACKING_URI`` or, by default, ``mlruns/mlflow.db`` (SQLite) with artefacts in
  ``mlruns/artifacts`` under the working folder. Its run id is kept in ``RUN/tracking.json`` so that a
  resumed run logs into the same MLflow run.

Both are optional extras, imported only when asked for.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, first_line
from ..io import CONNECT_SECONDS, write_json

INSTALL = "pip install 'medclassify[tracking]'"
TRACKING_RECORD = "tracking.json"
EPOCH_SCALARS = {  # history.csv column -> tracker name
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_acc": "val/acc",
    "val_auc": "val/auc",
    "val_f1": "val/f1_macro",
    "lr": "lr",
    "images_per_s": "images_per_s",
}
TEST_SCALARS = ("acc", "auc", "f1_macro", "ece")
RUN_ARTIFACTS = ("config.json", "metrics.json", "history.csv", "predictions.csv", "MODEL_CARD.md")
DEFAULT_EXPERIMENT = "medclassify"


def _scalar_params(config: dict) -> dict:
    """Config values as tracker parameters: numbers, booleans and strings as they are, the rest as text."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        for key, value in config.items()
        if value is not None
    }


def _figures(history: list[dict], metrics: dict, class_names: list[str]):
    """The loss curves and the test confusion matrix as matplotlib figures."""
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    from ..evaluation.figures import subplots

    figures = {}
    curves, ax = subplots(figsize=(5, 3.5))
    epochs = [int(row["epoch"]) for row in history]
    for column, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax.plot(epochs, [float(row[column]) for row in history], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    figures["loss_curves"] = curves
    matrix = metrics["test"].get("confusion_matrix")
    if matrix is not None and np.ndim(matrix) == 2:
        confusion, ax = subplots(figsize=(6, 5))
        ConfusionMatrixDisplay(np.asarray(matrix), display_labels=[n[:14] for n in class_names]).plot(
            ax=ax, colorbar=False, xticks_rotation=45
        )
        figures["confusion_matrix"] = confusion
    return figures


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, run_dir: Path, record: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                f"track tensorboard needs the tensorboard package: {INSTALL}", parameters=("track",)
            ) from None
        self.record = record
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log_epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        for column, name in EPOCH_SCALARS.items():
            self.writer.add_scalar(name, float(row[column]), step)
        self.writer.flush()

    def finish(self, run_dir: Path, metrics: dict, history: list[dict]) -> None:
        test = {f"test/{k}": float(metrics["test"][k]) for k in TEST_SCALARS if k in metrics["test"]}
        self.writer.add_hparams(_scalar_params(self.record["config"]), test, run_name="hparams")
        for name, figure in _figures(history, metrics, self.record["data"]["class_names"]).items():
            self.writer.add_figure(name, figure, len(history))
        self.writer.close()


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise ConfigError(f"track mlflow needs the mlflow package: {INSTALL}", parameters=("track",)) from None
    return mlflow


# The stores MLflow's client opens (a database scheme may name its driver: postgresql+psycopg2).
MLFLOW_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
DEFAULT_STORE = "mlruns"


def check_mlflow_store() -> None:
    """The tracking store must be usable before a run writes anything: ``MLFLOW_TRACKING_URI`` of a
    scheme MLflow opens and, for a server, one that answers within a few seconds (MLflow itself
    retries for minutes); without it, ``./mlruns`` must be a folder or creatable."""
    from urllib.error import HTTPError
    from urllib.parse import urlsplit
    from urllib.request import urlopen

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        store = Path(DEFAULT_STORE)
        if store.exists() and not store.is_dir():
            raise ConfigError(f"{store.resolve()}: is a file, not an MLflow store; move it, or set MLFLOW_TRACKING_URI")
        return
    scheme = urlsplit(uri).scheme.lower().split("+")[0]
    if len(scheme) == 1:  # a Windows drive letter: a local path
        scheme = ""
    if scheme not in MLFLOW_SCHEMES:
        raise ConfigError(
            f"MLFLOW_TRACKING_URI {uri}: unsupported scheme '{scheme}'; expected a folder, sqlite:///FILE, a "
            "database URI or http(s)://SERVER"
        )
    if scheme in ("http", "https"):
        try:
            with urlopen(uri.rstrip("/") + "/health", timeout=CONNECT_SECONDS):
                pass
        except HTTPError:  # the server answered, if not on that path
            pass
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(
                f"MLFLOW_TRACKING_URI {uri}: the tracking server does not answer within "
                f"{CONNECT_SECONDS:g} s ({first_line(reason)}); nothing was tracked"
            ) from None


def mlflow_client(experiment: str = DEFAULT_EXPERIMENT):
    """An MLflow client on ``MLFLOW_TRACKING_URI`` (default: ``mlruns/`` here, SQLite) and the id of
    ``experiment``, created when missing."""
    mlflow = _mlflow()
    check_mlflow_store()
    for name in ("mlflow.store.db.utils", "alembic"):  # "creating tables" chatter on a new store's first use
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    artifacts = None
    if not uri:
        store = Path(DEFAULT_STORE).resolve()
        store.mkdir(exist_ok=True)
        uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment, artifacts)
    return client, experiment_id


def study_run(study_name: str, study_dir: Path, continue_run: bool = True) -> str:
    """The MLflow parent run of a study (kept in ``STUDY/tracking.json``, so that a resumed study
    keeps it); its experiments log as its children."""
    saved = Path(study_dir) / TRACKING_RECORD
    if continue_run and saved.is_file():
        return json.loads(saved.read_text())["mlflow_run_id"]
    client, experiment_id = mlflow_client()
    run_id = client.create_run(experiment_id, run_name=study_name, tags={"medclassify.study": study_name}).info.run_id
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    write_json(saved, {"mlflow_run_id": run_id, "tracking_uri": client.tracking_uri})
    return run_id


def finish_study_run(run_id: str) -> None:
    """Mark a study's parent run finished (its children are)."""
    mlflow_client()[0].set_terminated(run_id)


class MlflowTracker:
    name = "mlflow"

    def __init__(self, run_dir: Path, record: dict, parent_run_id: str | None = None, continue_run: bool = True):
        from mlflow.entities import Param

        self.client, experiment_id = mlflow_client()
        saved = run_dir / TRACKING_RECORD
        previous = json.loads(saved.read_text()).get("mlflow_run_id") if saved.is_file() else None
        if previous and continue_run:  # a resumed run continues its MLflow run
            self.run_id = previous
            return
        config = record["config"]
        tags = {
            "dataset": record["data"]["name"],
            "model": config["model"],
            "seed": str(config["seed"]),
            "medclassify.run_dir": str(run_dir.resolve()),
        }
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in _scalar_params(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        write_json(saved, {"mlflow_run_id": self.run_id, "tracking_uri": self.client.tracking_uri})

    def log_epoch(self, row: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        self.client.log_batch(
            self.run_id, metrics=[Metric(name, float(row[column]), now, step) for column, name in EPOCH_SCALARS.items()]
        )

    def finish(self, run_dir: Path, metrics: dict, history: list[dict]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        test = [
            Metric(f"test/{k}", float(metrics["test"][k]), now, len(history))
            for k in TEST_SCALARS
            if k in metrics["test"]
        ]
        self.client.log_batch(self.run_id, metrics=test)
        for name in RUN_ARTIFACTS:
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        for figure in sorted(run_dir.glob("*.png")):
            self.client.log_artifact(self.run_id, str(figure), "figures")
        self.client.log_artifact(self.run_id, str(run_dir / "best.pt"), "bundle")
        self._log_model(run_dir / "best.pt")
        self.client.set_terminated(self.run_id)

    def _log_model(self, bundle: Path) -> None:
        """The bundle as the run's MLflow model ``model`` (pyfunc, saved with the code file that loads
        it, inference/mlflow_model.py, which MLflow runs when the model is loaded: no import here, and
        no global MLflow state is touched)."""
        import tempfile

        import mlflow

        from .. import __version__

        code = Path(__file__).resolve().parents[1] / "inference" / "mlflow_model.py"
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's advice on type hints in the model's code
            mlflow.pyfunc.save_model(
                Path(tmp) / "model",
                python_model=str(code),
                artifacts={"bundle": str(bundle)},
                pip_requirements=[f"medclassify=={__version__}"],
            )
            self.client.log_artifacts(self.run_id, str(Path(tmp) / "model"), "model")


def open_trackers(
    names: Sequence[str] | None,
    run_dir: Path,
    record: dict,
    parent_run_id: str | None = None,
    continue_run: bool = True,
) -> list:
    """The trackers ``names`` asks for, opened for one run (``record``: its config.json)."""
    return [
        TensorBoardTracker(run_dir, record)
        if name == "tensorboard"
        else MlflowTracker(run_dir, record, parent_run_id, continue_run)
        for name in dict.fromkeys(names or [])
    ]


def replay_study(folder: Path, names: list[str]) -> list[Path]:
    """Send every finished run of a study folder (``STUDY/runs/*``), under one new MLflow parent run,
    or one run folder, to the trackers ``names``; returns the runs sent. Every run's records are read
    and checked, and the store is checked, before anything is sent."""
    from ..runs import RunDir

    if "mlflow" in names:
        _mlflow()
        check_mlflow_store()
    if RunDir(folder).config_path.is_file():
        runs, study = [folder], False
    else:
        runs = sorted(p for p in (folder / "runs").glob("*") if RunDir(p).is_finished())
        if not runs:
            raise ConfigError(f"{folder}: neither a run folder nor a study folder with finished runs in runs/")
        study = True
    records = [(run, run.record(), run.history(), run.metrics()) for run in map(RunDir, runs)]
    parent = study_run(folder.name, folder, continue_run=False) if study and "mlflow" in names else None
    for run, record, history, metrics in records:
        for tracker in open_trackers(names, run.path, record, parent, continue_run=False):
            for row in history:
                tracker.log_epoch(row)
            tracker.finish(run.path, metrics, history)
    if parent:
        finish_study_run(parent)
    return runs
