import csv
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from medmnist.evaluator import getACC, getAUC

from helpers import interrupt_training_at_epoch
from medclassify import PostTrainingConfig, RunConfig, RuntimeConfig, TrainConfig, evaluate_run, train
from medclassify.errors import CheckpointError, ConfigError
from medclassify.io import file_md5
from medclassify.runs import load_checkpoint
from medclassify.training import trainer

RUN_FILES = {"config.json", "history.csv", "best.pt", "last.pt", "metrics.json", "predictions.csv"}


def config_for(data_dir, out, **overrides):
    values = dict(
        dataset="bloodmnist", size=28, data_dir=str(data_dir), out=str(out), epochs=3, verify=False, quiet=True, seed=1
    )
    return TrainConfig(**{**values, **overrides})


def read_history(run_dir):
    with open(run_dir / "history.csv") as f:
        return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in csv.DictReader(f)]


def test_short_run_beats_chance_and_writes_the_run_folder(blood_run):
    run_dir = blood_run.run_dir
    assert {p.name for p in run_dir.iterdir()} >= RUN_FILES
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")], "no temporary files left behind"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["acc"] > 0.5, "8 classes: chance is 0.125"
    assert metrics["test"]["auc"] > 0.8 and set(metrics) >= {"val", "test", "best_epoch"}
    assert len(metrics["test"]["per_class"]) == 8 and np.array(metrics["test"]["confusion_matrix"]).shape == (8, 8)

    history = read_history(run_dir)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert list(history[0]) == ["epoch", "train_loss", "val_loss", "val_acc", "val_auc", "val_f1", "lr"]
    best_epoch = max(history, key=lambda r: float(r["val_auc"]))["epoch"]
    assert metrics["best_epoch"] == int(best_epoch)

    record = json.loads((run_dir / "config.json").read_text())
    assert record["config"]["lr"] == 1e-3 and record["config"]["batch_size"] == 32
    assert record["data"]["source"]["md5"] == file_md5(run_dir.parent / "data" / "bloodmnist.npz")
    assert record["environment"]["packages"]["torch"] == importlib.metadata.version("torch")
    assert record["config"]["seed"] == 1 and record["environment"]["python"]
    assert len(record["preprocessing"]["mean"]) == 3 and record["model"]["parameters"] == 421_960


def test_predictions_csv_agrees_with_medmnist_evaluator(blood_run):
    with open(blood_run.run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 80
    y_true = np.array([int(r["true"]) for r in rows])
    y_score = np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows])
    test = blood_run.metrics["test"]
    assert getACC(y_true, y_score, "multi-class") == pytest.approx(test["acc"], abs=1e-9)
    assert getAUC(y_true, y_score, "multi-class") == pytest.approx(test["auc"], abs=1e-9)


def test_predictions_csv_is_lossless_near_0_and_1(tmp_path):
    """Scores within 1e-6 of 0 and 1, where 6 digits tie: the record gives MedMNIST's evaluator the
    run's own numbers."""
    from medclassify.data import LoadedDataset
    from medclassify.evaluation import classification_metrics, write_predictions

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 400)
    positive = np.where(y_true == 1, 1 - rng.uniform(0, 1e-6, 400), rng.uniform(0, 1e-6, 400))
    positive[rng.choice(400, 60, replace=False)] = rng.uniform(0, 1, 60)  # some mistakes, so that the AUC is not 1
    y_prob = np.stack([1 - positive, positive], axis=1).astype(np.float32).astype(np.float64)
    data = LoadedDataset("pneumoniamnist", "binary-class", ["normal", "pneumonia"], 1, 28, {}, source={})
    write_predictions(tmp_path / "p.csv", y_true, y_prob, data)
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    saved = np.array([[float(r["prob_normal"]), float(r["prob_pneumonia"])] for r in rows])
    assert np.array_equal(saved.astype(np.float32), y_prob.astype(np.float32))  # every float32 read back exactly
    metrics = classification_metrics(y_true, y_prob, "binary-class")
    assert abs(getAUC(y_true, saved, "binary-class") - metrics["auc"]) <= 1e-9
    assert abs(getACC(y_true, saved, "binary-class") - metrics["acc"]) <= 1e-9


@pytest.mark.slow
def test_medmnist_result_files_evaluate_to_the_runs_figures(blood_run, tmp_path):
    """Each split in MedMNIST's own format: 'python -m medmnist evaluate' prints the run's ACC/AUC."""
    # medmnist's evaluate writes beside the file it reads: a copy keeps the shared run as it is
    copied = shutil.copytree(blood_run.run_dir / "medmnist", tmp_path / "medmnist")
    files = sorted(copied.glob("*.csv"))
    assert [f.name.split("_[")[0] for f in files] == ["bloodmnist_test", "bloodmnist_val"]
    home = tmp_path / "home"
    (home / ".medmnist").mkdir(parents=True)
    shutil.copy(
        blood_run.run_dir.parent / "data" / "bloodmnist.npz", home / ".medmnist"
    )  # where medmnist looks for labels
    for path, split in zip(files, ("test", "val")):
        done = subprocess.run(
            [sys.executable, "-m", "medmnist", "evaluate", f"--path={path}"],
            capture_output=True,
            text=True,
            env={**os.environ, "HOME": str(home)},
            timeout=120,
        )
        printed = dict(
            part.split("=") for part in done.stdout.strip().removeprefix("Metrics(").removesuffix(")").split(", ")
        )
        assert float(printed["AUC"]) == pytest.approx(blood_run.metrics[split]["auc"], abs=1e-9), done.stderr
        assert float(printed["ACC"]) == pytest.approx(blood_run.metrics[split]["acc"], abs=1e-9)


def test_checkpoints_load_with_weights_only_and_rebuild_the_model(blood_run):
    state = torch.load(blood_run.run_dir / "best.pt", weights_only=True)
    assert state["model"] == {"name": "paper-cnn", "in_channels": 3, "num_classes": 8, "image_size": 28}
    assert state["preprocessing"]["size"] == 28 and len(state["dataset"]["class_names"]) == 8
    assert load_checkpoint(blood_run.run_dir / "last.pt")["epoch"] == 3


def test_bad_checkpoint_files_get_one_clear_line(tmp_path, blood_run):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt: not a readable medclassify checkpoint"):
        load_checkpoint(tmp_path / "notes.pt")
    data = (blood_run.run_dir / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable medclassify checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a medclassify checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_same_seed_same_numbers(blood_dir, tmp_path, blood_run):
    again = train(config_for(blood_dir, tmp_path / "again"))
    assert read_history(again.run_dir) == read_history(blood_run.run_dir)
    assert again.metrics["test"]["auc"] == blood_run.metrics["test"]["auc"]
    other = train(config_for(blood_dir, tmp_path / "other", seed=2, epochs=1))
    assert read_history(other.run_dir)[0] != read_history(blood_run.run_dir)[0]


def test_a_run_stopped_in_its_first_epoch_starts_again(blood_dir, tmp_path, blood_run, monkeypatch):
    """Stopped before any checkpoint (only config.json written): --resume has nothing to continue
    and says to run again; running again trains from the start to the same result (a study does
    this when it is restarted)."""
    real_epoch = interrupt_training_at_epoch(monkeypatch, 1)
    config = config_for(blood_dir, tmp_path / "early")
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert [p.name for p in (tmp_path / "early").iterdir() if not p.name.startswith(".")] == ["config.json"]
    monkeypatch.setattr(trainer, "train_one_epoch", real_epoch)
    config.resume = True
    with pytest.raises(CheckpointError, match=r"stopped before its first epoch ended: start it again without it"):
        train(config)
    config.resume = False
    again = train(config)
    assert read_history(again.run_dir) == read_history(blood_run.run_dir)
    assert again.metrics["test"] == blood_run.metrics["test"]


def test_interrupted_run_resumes_to_the_same_result(blood_dir, tmp_path, blood_run, monkeypatch):
    real_epoch = interrupt_training_at_epoch(monkeypatch, 2)
    config = config_for(blood_dir, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        train(config)
    state = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert state["epoch"] == 1 and state["best_epoch"] == 1 and len(state["history"]) == 1
    assert {"model_state", "optimizer_state", "scaler_state", "early_stopping", "process_rng"} <= set(state)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(trainer, "train_one_epoch", real_epoch)

    with pytest.raises(CheckpointError, match=r"already holds a run \(config.json, best.pt, last.pt\); pass resume"):
        train(config)
    config.resume = True
    resumed = train(config)
    assert read_history(resumed.run_dir) == read_history(blood_run.run_dir)
    assert resumed.metrics["test"] == blood_run.metrics["test"]
    assert json.loads((resumed.run_dir / "config.json").read_text())["resumed_after_epoch"] == 1


def test_where_a_run_executes_may_change_on_resume_and_what_defines_it_may_not():
    run_fields, runtime_fields = {f.name for f in fields(RunConfig)}, {f.name for f in fields(RuntimeConfig)}
    post_training = {f.name for f in fields(PostTrainingConfig)}
    assert not run_fields & runtime_fields and not post_training & (run_fields | runtime_fields)
    assert run_fields | post_training | runtime_fields == {f.name for f in fields(TrainConfig)}
    config = TrainConfig(dataset="bloodmnist")
    elsewhere = replace(config, device="cpu", num_threads=1, out="x", data_dir="y", quiet=True, eval_batch_size=7)
    longer = replace(config, epochs=20, calibration="temperature", threshold="youden")
    assert elsewhere.fixed_settings() == longer.fixed_settings() == config.fixed_settings()
    assert replace(config, lr=0.01).fixed_settings() != config.fixed_settings()
    assert "device" not in config.fixed_settings() and "seed" in config.fixed_settings()


def test_configs_written_before_the_post_training_keys_were_renamed_still_load():
    # config.json of a run trained before 'calibrate' and 'robustness' became 'calibration' and 'corruptions'
    old = TrainConfig.from_dict({"dataset": "bloodmnist", "calibrate": "temperature", "robustness": "auto"})
    assert (old.calibration, old.corruptions) == ("temperature", "auto")
    with pytest.raises(ConfigError, match="corruptions"):
        TrainConfig.from_dict({"dataset": "bloodmnist", "robustness": "mild"})


def test_a_runs_thread_count_does_not_carry_over_to_the_next_run_in_the_process(blood_dir, tmp_path):
    # a later run in the same process (a study, a test suite) computes as it would alone
    before = torch.get_num_threads()
    train(config_for(blood_dir, tmp_path / "one_thread", epochs=1, num_threads=1))
    assert torch.get_num_threads() == before


def test_resume_refuses_changed_settings_or_missing_run(blood_dir, tmp_path, blood_run):
    with pytest.raises(CheckpointError, match=r"cannot resume with different settings \(lr: 0.001 -> 0.01\)"):
        train(config_for(blood_dir, blood_run.run_dir, lr=0.01, resume=True))
    with pytest.raises(CheckpointError, match="resume: .*last.pt does not exist"):
        train(config_for(blood_dir, tmp_path / "nothing", resume=True))


def test_64px_run_uses_the_extra_block(blood_dir, tmp_path):
    result = train(config_for(blood_dir, tmp_path / "run64", size=64, epochs=1))
    record = json.loads((result.run_dir / "config.json").read_text())
    assert record["model"]["image_size"] == 64 and record["model"]["parameters"] == 1_142_984
    assert {"acc", "auc", "f1_macro"} <= set(result.metrics["test"])


def test_binary_grey_run_reports_sensitivity_and_specificity(pneumonia_dir, tmp_path):
    result = train(config_for(pneumonia_dir, tmp_path / "pneu", dataset="pneumoniamnist", epochs=3))
    assert {"sensitivity", "specificity"} <= set(result.metrics["test"])
    assert result.metrics["test"]["acc"] > 0.7


def test_image_folder_run_records_its_split(tmp_path):
    from helpers import write_image_folder

    root = write_image_folder(tmp_path / "xray", per_class=20)
    result = train(TrainConfig(data_dir=str(root), size=32, out=str(tmp_path / "run"), epochs=1, quiet=True))
    with open(result.run_dir / "split.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert json.loads((result.run_dir / "config.json").read_text())["data"]["class_names"] == ["NORMAL", "PNEUMONIA"]


def test_the_shared_quadrant_model_learns_its_task(quadrant_run):
    # the one place its accuracy is checked: a regression fails here, not in every test that uses the run
    assert json.loads((quadrant_run / "metrics.json").read_text())["test"]["acc"] >= 0.95


def test_evaluate_run_reproduces_the_saved_metrics(blood_run, tmp_path):
    run = shutil.copytree(blood_run.run_dir, tmp_path / "run")  # evaluating rewrites the run's results
    saved = json.loads((run / "metrics.json").read_text())
    result = evaluate_run(run)
    assert result.test["acc"] == saved["test"]["acc"]
    assert result.test["auc"] == pytest.approx(saved["test"]["auc"], abs=1e-12)
    assert result.files == [run / "metrics.json", run / "predictions.csv"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"size": 30}, "size 30 is not available for bloodmnist; choose one of 28, 64, 128, 224"),
        ({"lr": 0.0}, "lr must be a number > 0, got 0.0"),
        ({"epochs": 0}, "epochs must be a whole number >= 1, got 0"),
        ({"batch_size": -4}, "batch_size must be a whole number >= 1, got -4"),
        ({"model": "resnet999"}, "model: unknown model 'resnet999'"),
        ({"dataset": "bloodmnst"}, "unknown dataset 'bloodmnst'"),
        ({"select_metric": "precision"}, "select_metric must be one of auc, acc, f1, loss"),
        ({"device": "tpu"}, "device must be auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_impossible_values_are_rejected_before_any_work(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(config_for(tmp_path, tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()


def test_yaml_config_fills_the_same_fields(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: bloodmnist\nsize: 64\nbatch-size: 16\nlr: 0.0005\n")
    config = TrainConfig.from_yaml(path)
    assert (config.dataset, config.size, config.batch_size, config.lr, config.epochs) == (
        "bloodmnist",
        64,
        16,
        0.0005,
        10,
    )
    path.write_text("dataset: bloodmnist\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key\\(s\\) learning_rate"):
        TrainConfig.from_yaml(path)
