"""Distributed data-parallel training through torchrun (Gloo, two CPU processes on loopback), and
studies on a local Ray instance."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from helpers import write_medmnist_npz, write_study_files
from medclassify.config import TrainConfig
from medclassify.errors import CheckpointError
from medclassify.experiments import Study, load_experiments, results_rows, run_study
from medclassify.runs import evaluate_run
from medclassify.training import train

pytestmark = pytest.mark.slow  # torchrun processes and a Ray instance

RUN_FILES = [
    "MODEL_CARD.md",
    "best.pt",
    "config.json",
    "history.csv",
    "last.pt",
    "medmnist",
    "metrics.json",
    "predictions.csv",
]


def torchrun_train(*args: str, cwd: Path | None = None, **env_vars: str) -> subprocess.CompletedProcess:
    scratch, inductor = Path(tempfile.mkdtemp()), tempfile.mkdtemp()
    # PyTorch makes its (empty) compiler cache folder in TMPDIR when an optimiser is built: not the launcher's
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(scratch),
        "TORCHINDUCTOR_CACHE_DIR": inductor,
        **env_vars,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "medclassify", "train", "--nproc", "2", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            cwd=cwd,
        )
        assert list(scratch.iterdir()) == [], "the launcher left files behind"  # e.g. torchelastic_* log folders
        return done
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(inductor, ignore_errors=True)


@pytest.fixture(scope="module")
def one_batch_data(tmp_path_factory) -> Path:
    """bloodmnist-layout file whose training split is exactly one batch of 32 images."""
    data = tmp_path_factory.mktemp("ddp") / "data"
    write_medmnist_npz(data / "bloodmnist.npz", counts=(32, 24, 40))
    return data


def options(data: Path, out: Path, epochs: int = 1) -> list[str]:
    return [
        "--dataset",
        "bloodmnist",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--batch-size",
        "32",
        "--no-verify",
        "--quiet",
        "--num-threads",
        "1",
    ]


def test_two_processes_take_the_step_of_one_process_on_the_combined_batch(one_batch_data, tmp_path):
    # SGD, whose step is linear in the gradient: Adam's first step divides each gradient by its own
    # size, which turns float rounding in a near-zero gradient into a visible difference
    done = torchrun_train(*options(one_batch_data, tmp_path / "ddp"), "--optimizer", "sgd", "--lr", "0.1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test: acc") == 1  # rank 0 alone prints
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == RUN_FILES  # and writes, atomically
    record = json.loads((tmp_path / "ddp" / "config.json").read_text())["distributed"]
    assert (
        record["world_size"] == 2
        and record["backend"] == "gloo"
        and record["batch_per_process"] == 16
        and record["effective_batch"] == 32
    )

    train(
        TrainConfig(
            dataset="bloodmnist",
            data_dir=str(one_batch_data),
            out=str(tmp_path / "single"),
            epochs=1,
            batch_size=32,
            verify=False,
            quiet=True,
            num_threads=1,
            optimizer="sgd",
            lr=0.1,
        )
    )
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model_state"]
    single = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["model_state"]
    assert ddp.keys() == single.keys()  # saved without DDP's 'module.' prefix
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=0, atol=1e-7, msg=f"{name} differs")

    # the test metrics, gathered over both processes, equal one process's evaluation of the same weights
    written = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    again = evaluate_run(tmp_path / "ddp", device="cpu")
    for split, figures in (("val", again.val), ("test", again.test)):
        for key in ("acc", "auc", "f1_macro"):
            assert figures[key] == pytest.approx(written[split][key], abs=1e-12)
        assert figures["loss"] == pytest.approx(written[split]["loss"], rel=1e-6)  # float32 batch means, other batches


def test_distributed_resume_continues_like_an_uninterrupted_run_and_rank_0_alone_reports(one_batch_data, tmp_path):
    # the uninterrupted run also reports to both trackers: what it writes there comes from rank 0 alone
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    straight = torchrun_train(
        *options(one_batch_data, tmp_path / "straight", epochs=2),
        "--track",
        "tensorboard",
        "mlflow",
        cwd=tmp_path,
        MLFLOW_TRACKING_URI=uri,
    )
    first = torchrun_train(*options(one_batch_data, tmp_path / "resumed", epochs=1))
    second = torchrun_train(*options(one_batch_data, tmp_path / "resumed", epochs=2), "--resume")
    assert straight.returncode == first.returncode == second.returncode == 0, second.stderr[-3000:]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert len(b["process_rng"]) == 2
    for name in a["model_state"]:
        assert torch.equal(a["model_state"][name], b["model_state"][name]), name
    assert [r["val_loss"] for r in a["history"]] == [r["val_loss"] for r in b["history"]]

    _reported_by_rank_0_alone(tmp_path / "straight", uri)
    with pytest.raises(CheckpointError, match="the run used 2 process"):
        train(
            TrainConfig(
                dataset="bloodmnist",
                data_dir=str(one_batch_data),
                out=str(tmp_path / "resumed"),
                epochs=3,
                batch_size=32,
                verify=False,
                quiet=True,
                resume=True,
            )
        )


def _reported_by_rank_0_alone(run: Path, uri: str) -> None:
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writers = {path.name.split(".")[4] for path in (run / "tensorboard").rglob("events.out.tfevents.*")}
    assert len(writers) == 1  # every event file (scalars, hparams) was written by one process: rank 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert [s.step for s in events.Scalars("val/acc")] == [1, 2]
    assert [s.value for s in events.Scalars("val/acc")] == pytest.approx([float(r["val_acc"]) for r in history])
    client = mlflow.MlflowClient(tracking_uri=uri)
    (tracked,) = client.search_runs([client.get_experiment_by_name("medclassify").experiment_id])
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == run.name
    assert [m.step for m in client.get_metric_history(tracked.info.run_id, "val/auc")] == [1, 2]  # once per epoch
    assert json.loads((run / "tracking.json").read_text())["mlflow_run_id"] == tracked.info.run_id


def test_effective_batch_must_divide_over_the_processes(one_batch_data, tmp_path):
    done = torchrun_train(*options(one_batch_data, tmp_path / "odd"), "--batch-size", "33")
    assert done.returncode == 2 and done.stderr == (
        "medclassify train: error: --batch-size 33 is the effective batch and must divide evenly over 2 processes\n"
    )
    assert not (tmp_path / "odd").exists()  # checked before any process started


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install 'medclassify[ray]')"
)
def test_study_on_a_local_ray_instance_gives_the_local_results(tmp_path, monkeypatch, request):
    # a temporary folder of this test's own (short: Ray's socket paths are limited), so that a Ray
    # instance of a test running beside it in another worker does not count as left behind
    private = Path(tempfile.mkdtemp(prefix="t"))
    request.addfinalizer(lambda: shutil.rmtree(private, ignore_errors=True))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    data = write_study_files(tmp_path / "data", ["bloodmnist"], sizes=(28,))
    study = Study.from_dict(
        {
            "name": "ray",
            "datasets": ["bloodmnist"],
            "sizes": [28],
            "models": ["paper-cnn", "bn-cnn"],
            "seeds": [0],
            "train": {"epochs": 1, "verify": False, "num_threads": 1},
        }
    )
    run_study(study, tmp_path / "local", data_dir=str(data), quiet=True)
    ray_folders = set(Path(tempfile.gettempdir()).glob("ray*"))
    statuses = run_study(study, tmp_path / "ray", data_dir=str(data), quiet=True, backend="ray", workers=2)
    assert set(Path(tempfile.gettempdir()).glob("ray*")) <= ray_folders  # the local Ray instance took its files with it
    assert [s.state for s in statuses] == ["trained", "trained"]
    timing = {"train_seconds", "images_per_s"}  # wall-clock figures, the only ones that may differ
    rows = {
        name: [
            {k: v for k, v in row.items() if k not in timing}
            for row in results_rows(load_experiments(study, tmp_path / name), n_boot=200)
        ]
        for name in ("local", "ray")
    }
    assert len(rows["ray"]) == 2 and rows["local"] == rows["ray"]
    assert (
        run_study(study, tmp_path / "ray", data_dir=str(data), quiet=True, backend="ray")[0].state == "done"
    )  # resumable folder
