"""Experiment tracking: TensorBoard event files and MLflow runs read back with their own readers,
from training, from a study (parent and child runs) and after the fact from the run folders."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from helpers import write_study_files
from medclassify.cli import main

pytest.importorskip("tensorboard")
mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artefacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def _history(run):
    from medclassify.runs import RunDir

    return RunDir(run).history()


def _predictions(run):
    from medclassify.runs import RunDir

    return RunDir(run).predictions()


def _runs(client):
    experiment = client.get_experiment_by_name("medclassify")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_a_tracked_run_writes_tensorboard_scalars_and_an_mlflow_run(blood_dir, tmp_path, store):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = ["train", "--dataset", "bloodmnist", "--data-dir", str(blood_dir), "--out", str(run), "--epochs", "2"]
    assert main([*args, "--no-verify", "--quiet", "--track", "tensorboard", "mlflow"]) == 0
    history, metrics = _history(run), json.loads((run / "metrics.json").read_text())
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for column, tag in (("val_acc", "val/acc"), ("train_loss", "loss/train"), ("lr", "lr")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([float(row[column]) for row in history], rel=1e-5)
    assert {"loss_curves", "confusion_matrix"} <= set(events.Tags()["images"])

    (tracked,) = _runs(store)
    assert tracked.info.run_name == "run" and tracked.info.status == "FINISHED"
    assert (tracked.data.tags["dataset"], tracked.data.tags["model"], tracked.data.tags["seed"]) == (
        "bloodmnist",
        "paper-cnn",
        "0",
    )
    assert tracked.data.params["lr"] == "0.001" and tracked.data.params["epochs"] == "2"
    steps = store.get_metric_history(tracked.info.run_id, "val/auc")
    assert [(m.step, m.value) for m in steps] == [
        (int(r["epoch"]), pytest.approx(float(r["val_auc"]))) for r in history
    ]
    assert tracked.data.metrics["test/acc"] == pytest.approx(metrics["test"]["acc"])
    artifacts = {a.path for a in store.list_artifacts(tracked.info.run_id)}
    assert {"config.json", "metrics.json", "history.csv", "MODEL_CARD.md", "bundle"} <= artifacts
    assert [a.path for a in store.list_artifacts(tracked.info.run_id, "bundle")] == ["bundle/best.pt"]
    assert json.loads((run / "tracking.json").read_text())["mlflow_run_id"] == tracked.info.run_id

    # the bundle as the run's MLflow model: loaded by MLflow, it predicts what the run predicted
    assert "model/MLmodel" in {a.path for a in store.list_artifacts(tracked.info.run_id, "model")}
    with np.load(blood_dir / "bloodmnist.npz") as archive:
        images = archive["test_images"][:16]
    frame = mlflow.pyfunc.load_model(f"runs:/{tracked.info.run_id}/model").predict(images)
    expected = _predictions(run)[:16]
    columns = [c for c in frame.columns if c.startswith("prob_")]
    assert list(frame["predicted"]) == [columns[int(row["predicted"])].removeprefix("prob_") for row in expected]
    recorded = np.array([[float(row[c]) for c in columns] for row in expected])
    assert np.abs(frame[columns].to_numpy() - recorded).max() < 1e-6


def test_a_study_logs_a_parent_run_and_a_child_per_experiment_and_track_resends_it(tmp_path, store, capsys):
    data = write_study_files(tmp_path / "data", ["bloodmnist"], sizes=(28,))
    study_yaml = tmp_path / "tracked.yaml"
    study_yaml.write_text(
        "name: tracked\ndatasets: [bloodmnist]\nsizes: [28]\nseeds: 2\ntrain: {epochs: 1, track: [mlflow, tensorboard]}\n"
    )
    out = tmp_path / "study"
    assert main(["run", str(study_yaml), "--out", str(out), "--data-dir", str(data), "--no-verify", "--quiet"]) == 0
    parent, *children = _runs(store)
    assert parent.info.run_name == "tracked" and parent.info.status == "FINISHED" and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.tags["seed"] for c in children) == ["0", "1"]
    assert all((out / "runs" / f"bloodmnist_28_paper-cnn_seed{s}" / "tensorboard").is_dir() for s in (0, 1))

    assert main(["track", str(out), "--to", "mlflow"]) == 0
    assert "sent 2 run(s) to mlflow" in capsys.readouterr().out
    replayed = _runs(store)[3:]
    new_parent = replayed[0]
    assert new_parent.info.run_name == "study" and len(replayed) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in replayed[1:]} == {new_parent.info.run_id}
    for child in replayed[1:]:
        history = _history(out / "runs" / child.info.run_name)
        assert [m.value for m in store.get_metric_history(child.info.run_id, "val/acc")] == pytest.approx(
            [float(r["val_acc"]) for r in history]
        )


def test_without_the_tracking_extra_the_option_says_what_to_install(blood_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    run = tmp_path / "run"
    assert (
        main(["train", "--dataset", "bloodmnist", "--data-dir", str(blood_dir), "--out", str(run), "--track", "mlflow"])
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "--track mlflow needs the mlflow package: pip install 'medclassify[tracking]'" in err
    )
    assert not run.exists()  # refused before anything was written
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--dataset", "bloodmnist", "--track", "wandb"])
    assert exit_.value.code == 2 and "invalid choice: 'wandb'" in capsys.readouterr().err
