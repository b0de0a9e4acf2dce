"""Bad inputs a new user or an attacker gave medclassify, each kept answered by one clear line, a
non-zero exit and an untouched run folder: a first pass over train, evaluate, predict, export, serve
and studies, a second over the split cache, calibrate, ensemble, robustness, tune, track and the Hub.
The server's resources are checked in test_serve_limits.py."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import (
    QUADRANT_CLASSES,
    one_line_error,
    quadrant_images,
    run_cli,
    write_image_folder,
    write_medmnist_npz,
)
from medclassify.cli import main
from medclassify.config import TrainConfig
from medclassify.errors import TrainingDiverged
from medclassify.training import train


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content's digest: what 'nothing changed' compares."""
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def tiny_config(data_dir: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        dataset="bloodmnist",
        size=28,
        data_dir=str(data_dir),
        out=str(out),
        epochs=2,
        quiet=True,
        num_threads=2,
        verify=False,
    )
    return TrainConfig(**{**values, **overrides})


@contextmanager
def held_by_another_process(folder: Path, command: str):
    """``folder`` locked by a live process (a sleeping child) as medclassify's ``command`` would lock it;
    yields that process's PID."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / ".medclassify.lock").write_text(
            json.dumps({"pid": holder.pid, "host": os.uname().nodename, "command": command, "since": "now"})
        )
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def finished_run(blood_dir, tmp_path) -> Path:
    return train(tiny_config(blood_dir, tmp_path / "run")).run_dir


# ---- lost or mixed results ------------------------------------------------------------------


def test_a_finished_run_without_last_pt_is_not_overwritten(finished_run, blood_dir, capsys):
    (finished_run / "last.pt").unlink()
    before = snapshot(finished_run)
    code, _, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "bloodmnist",
        "--data-dir",
        blood_dir,
        "--no-verify",
        "--out",
        finished_run,
        "--epochs",
        "1",
    )
    one_line_error(code, err, "already holds a run (config.json, metrics.json, best.pt); pass --resume")
    assert snapshot(finished_run) == before


def test_a_folder_in_use_is_refused_and_a_stale_lock_is_taken_over(blood_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with held_by_another_process(out, "train") as pid:
        code, _, err = run_cli(
            capsys,
            "train",
            "--dataset",
            "bloodmnist",
            "--data-dir",
            blood_dir,
            "--no-verify",
            "--out",
            out,
            "--epochs",
            "1",
        )
        one_line_error(code, err, f"is in use by another medclassify process (train PID {pid} on")
        assert sorted(p.name for p in out.iterdir()) == [".medclassify.lock"]
    # the holder is gone: its lock is stale, taken over with a warning, and removed at the end
    code, _, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "bloodmnist",
        "--data-dir",
        blood_dir,
        "--no-verify",
        "--out",
        out,
        "--epochs",
        "1",
        "--quiet",
    )
    assert code == 0 and f"removing the lock of PID {pid}" in err
    assert not (out / ".medclassify.lock").exists() and (out / "metrics.json").is_file()


def test_evaluate_and_export_take_the_lock_too(finished_run, capsys):
    (finished_run / ".medclassify.lock").write_text(
        json.dumps({"pid": os.getppid(), "host": os.uname().nodename, "command": "train"})
    )
    before = snapshot(finished_run)
    for command in (["evaluate", finished_run], ["export", finished_run]):
        code, _, err = run_cli(capsys, *command)
        one_line_error(code, err, "is in use by another medclassify process")
    assert snapshot(finished_run) == before


def test_evaluate_refuses_a_bundle_of_another_class_count(finished_run, blood_dir, tmp_path, capsys):
    other = train(
        tiny_config(
            write_medmnist_npz(tmp_path / "other" / "pathmnist.npz", n_classes=9).parent,
            tmp_path / "other_run",
            dataset="pathmnist",
            epochs=1,
            verify=False,
        )
    ).run_dir
    shutil.copy(other / "best.pt", finished_run / "best.pt")
    before = snapshot(finished_run)
    code, _, err = run_cli(capsys, "evaluate", finished_run)
    one_line_error(code, err, "the model does not fit the run's data (classes 9 vs 8")
    assert snapshot(finished_run) == before


def test_evaluating_last_pt_keeps_the_best_checkpoints_records(finished_run, capsys):
    before = {name: (finished_run / name).read_bytes() for name in ("metrics.json", "predictions.csv")}
    code, out, _ = run_cli(capsys, "evaluate", finished_run, "--checkpoint", "last")
    assert (
        code == 0 and f"wrote {finished_run / 'metrics_last.json'} and {finished_run / 'predictions_last.csv'}" in out
    )
    assert {name: (finished_run / name).read_bytes() for name in before} == before
    assert json.loads((finished_run / "metrics_last.json").read_text())["checkpoint"] == "last.pt"


@pytest.mark.slow
def test_a_study_tolerates_foreign_files_in_its_run_folders(tmp_path, capsys):
    from helpers import write_study_files

    data = write_study_files(tmp_path / "data", ["bloodmnist"], sizes=(28,), counts=(48, 16, 24))
    (tmp_path / "study.yaml").write_text(
        "name: s\ndatasets: [bloodmnist]\nsizes: [28]\nmodels: [paper-cnn]\nseeds: 2\ntrain: {epochs: 1}\n"
    )
    args = [
        "run",
        tmp_path / "study.yaml",
        "--data-dir",
        data,
        "--out",
        tmp_path / "s",
        "--quiet",
        "--bootstrap",
        "20",
        "--no-verify",
    ]
    assert run_cli(capsys, *args)[0] == 0
    foreign = tmp_path / "s" / "runs" / "bloodmnist_28_paper-cnn_seed1" / "metrics.json"
    foreign.write_text(json.dumps({"checkpoint": "last.pt", "best_epoch": None, "test": {}}))
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and "not the best checkpoint's test metrics; this run is left out" in err
    assert "| bloodmnist | 28 | paper-cnn | 0 |" in out  # the other seed is still reported


def test_an_edited_or_broken_model_onnx_is_not_trusted(exported_run, tmp_path, capsys):
    import onnx

    from medclassify.inference import Predictor

    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    image = tmp_path / "a.png"
    Image.fromarray(quadrant_images("top-left", 1)[0]).save(image)
    model = onnx.load(str(run / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "medclassify":  # class names edited inside the metadata
            prop.value = prop.value.replace('"top-left"', '"tampered"')
    onnx.save(model, str(run / "model.onnx"))
    with pytest.warns(UserWarning, match="model.onnx changed since it was exported"):
        predictor = Predictor.from_run(run)
    assert predictor.backend.name == "pytorch" and "tampered" not in predictor.class_names
    code, _, err = run_cli(capsys, "predict", run, image, "--backend", "onnx")
    one_line_error(code, err, "model.onnx changed since it was exported")

    (run / "model.onnx").write_bytes(os.urandom(3000))  # random bytes: falls back with one warning
    code, out, err = run_cli(capsys, "predict", run, image)
    assert code == 0 and "top-left" in out and err.count("warning:") == 1 and "Traceback" not in err
    code, _, err = run_cli(capsys, "predict", run / "model.onnx", image)  # the run's own export, by file
    one_line_error(code, err, "model.onnx changed since it was exported")
    (tmp_path / "random.onnx").write_bytes((run / "model.onnx").read_bytes())  # no record beside it
    code, _, err = run_cli(capsys, "predict", tmp_path / "random.onnx", image)
    one_line_error(code, err, "not a readable ONNX model")

    model = onnx.load(str(exported_run / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "medclassify":
            prop.value = "{not json"
    onnx.save(model, str(tmp_path / "broken.onnx"))
    for command in (
        ["predict", tmp_path / "broken.onnx", image],
        ["serve", tmp_path / "broken.onnx", "--port", "8999"],
    ):
        code, _, err = run_cli(capsys, *command)
        one_line_error(code, err, "its medclassify metadata is not valid JSON")


# ---- tracebacks turned into one line ---------------------------------------------------------


def test_a_diverging_run_stops_at_the_first_non_finite_loss(blood_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "bloodmnist",
        "--data-dir",
        blood_dir,
        "--no-verify",
        "--out",
        out,
        "--lr",
        "1e30",
        "--quiet",
    )
    one_line_error(code, err, "training diverged in epoch 1 (the training loss is")
    assert "no epoch finished, so no checkpoint was kept. Lower --lr (now 1e+30)" in err
    assert not (out / "last.pt").exists() and not (out / "metrics.json").exists()


def test_divergence_later_keeps_last_pt_of_the_last_finite_epoch(blood_dir, tmp_path, monkeypatch):
    from medclassify.runs import load_checkpoint
    from medclassify.training import trainer

    real = trainer.build_loss
    epochs = {"n": 0}

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)

        class Poisoned(torch.nn.Module):
            def forward(self, logits, targets):
                value = loss(logits, targets)
                return value * math.nan if epochs["n"] >= 2 else value

        return Poisoned()

    real_epoch = trainer.train_one_epoch

    def counted(*args, **kwargs):
        epochs["n"] += 1
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "build_loss", poisoned)
    monkeypatch.setattr(trainer, "train_one_epoch", counted)
    with pytest.raises(
        TrainingDiverged, match=r"training diverged in epoch 2 \(the training loss is nan\); .*last.pt keeps epoch 1"
    ):
        train(tiny_config(blood_dir, tmp_path / "run", epochs=3))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_class_folders_named_like_report_keys(tmp_path):
    from sklearn.metrics import precision_recall_fscore_support

    from medclassify.evaluation import classification_metrics

    names = ["accuracy", "macro avg", "weighted avg"]
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 60)
    y_score = rng.dirichlet(np.ones(3), 60)
    result = classification_metrics(y_true, y_score, "multi-class", names)
    precision, recall, _, support = precision_recall_fscore_support(
        y_true, y_score.argmax(1), labels=[0, 1, 2], zero_division=0
    )
    for i, name in enumerate(names):
        assert result["per_class"][name]["precision"] == pytest.approx(precision[i])
        assert (
            result["per_class"][name]["recall"] == pytest.approx(recall[i])
            and result["per_class"][name]["support"] == support[i]
        )
    root = write_image_folder(tmp_path / "folder", per_class=10)
    for old, new in (("NORMAL", "accuracy"), ("PNEUMONIA", "macro avg")):
        (root / "train" / old).rename(root / "train" / new)
    run = train(
        TrainConfig(dataset="folder", data_dir=str(root), size=28, epochs=1, quiet=True, out=str(tmp_path / "run"))
    )
    assert set(run.metrics["test"]["per_class"]) == {"accuracy", "macro avg"}


def lying_npz(path: Path, declared: tuple[int, ...], key: str = "images") -> Path:
    """An .npz whose array header declares ``declared`` but stores 10 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": declared})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{key}.npy", header.getvalue() + bytes(10))
    return path


def test_npz_headers_are_checked_before_loading(quadrant_run, blood_dir, tmp_path, capsys):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, images=quadrant_images("top-right", 2))
    lying = lying_npz(tmp_path / "lying.npz", (100_000, 100_000, 3))
    huge = tmp_path / "huge.npz"  # a real array, just more pixels than the limit
    with zipfile.ZipFile(huge, "w", zipfile.ZIP_DEFLATED) as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": (1, 15_000, 15_000)}
        )
        with archive.open("images.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            for _ in range(15):
                member.write(bytes(15_000_000))
    code, out, err = run_cli(capsys, "predict", quadrant_run, good, lying, huge)
    assert code == 0 and out.count("top-right") >= 2 and "Traceback" not in err
    assert (
        "lying.npz: 'images' declares shape (100000, 100000, 3) (30,000,000,000 bytes) but the file stores 10 bytes"
        in err
    )
    assert (
        "huge.npz: the 225,000,000 values of an array of shape (1, 15000, 15000) exceed the limit of 200,000,000 pixels"
        in err
    )
    bad_data = tmp_path / "bad"
    bad_data.mkdir()
    lying_member = lying_npz(tmp_path / "member.npz", (10**9, 28, 28, 3), key="train_images")
    with (
        zipfile.ZipFile(blood_dir / "bloodmnist.npz") as source,
        zipfile.ZipFile(bad_data / "bloodmnist.npz", "w") as target,
        zipfile.ZipFile(lying_member) as lying,
    ):
        for item in source.namelist():  # the same file, but its training images' header lies
            target.writestr(item, lying.read(item) if item == "train_images.npy" else source.read(item))
    code, _, err = run_cli(
        capsys, "train", "--dataset", "bloodmnist", "--data-dir", bad_data, "--no-verify", "--out", tmp_path / "r"
    )
    one_line_error(code, err, "'train_images' declares shape (1000000000, 28, 28, 3)")


def test_unwritable_outputs_get_one_line(finished_run, quadrant_run, blood_dir, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    image = tmp_path / "a.png"
    Image.fromarray(quadrant_images("top-left", 1)[0]).save(image)
    cases = [
        (
            ["train", "--dataset", "bloodmnist", "--data-dir", blood_dir, "--no-verify", "--out", blocker / "run"],
            f"{blocker / 'run'}: cannot write (Not a directory)",
        ),
        (
            ["predict", quadrant_run, image, "--out", blocker / "p.csv"],
            f"{blocker / 'p.csv'}: cannot write (Not a directory)",
        ),
        (
            ["export", finished_run, "--out", blocker / "m.onnx"],
            f"{blocker / 'm.onnx'}: cannot write (Not a directory)",
        ),
        (["explain", quadrant_run, image, "--out", blocker / "cams"], f"{blocker / 'cams'}"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        one_line_error(code, err, message)
        assert "cannot write (Not a directory)" in err

    before = snapshot(finished_run)
    real_replace = os.replace

    def disk_full(source, target):
        if str(target).endswith((".json", ".csv", ".pt")):
            raise OSError(28, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", disk_full)
    code, _, err = run_cli(capsys, "evaluate", finished_run)
    one_line_error(code, err, f"{finished_run / 'metrics.json'}: cannot write (No space left on device)")
    assert snapshot(finished_run) == before and not list(finished_run.glob(".*.tmp"))
    code, _, err = run_cli(capsys, "train", "--out", finished_run, "--resume", "--epochs", "3")
    one_line_error(code, err, "cannot write (No space left on device)")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "train: {device: 5}",
            "experiment bloodmnist_28_paper-cnn_seed0: device: Input should be a valid string, got 5",
        ),
        ("train: {gamma: null}", "gamma: Input should be a valid number, got None"),
        ("train: {label_smoothing: x}", "label_smoothing: Input should be a valid number"),
        ("train: {milestones: 5}", "milestones: Input should be a valid list, got 5"),
        ("sizes: [abc]", "sizes.0: Input should be a valid integer, got 'abc'"),
        ("seeds: [x]", "seeds.0: Input should be a valid integer, got 'x'"),
        ("train: [1, 2]", "train: Input should be a valid dictionary, got [1, 2]"),
        ("sizes: []", "sizes: List should have at least 1 item"),
        ("seeds: 100000000", "seeds: a count from 1 to 1000 or a list of seeds, got 100000000"),
        ("name: ''", "name: String should match pattern"),
        ("name: ../../x", "name: String should match pattern"),
        ("train: {verify: maybe}", "verify: Input should be a valid boolean"),
        ("sizes: [28.9]", "sizes.0: Input should be a valid integer, got 28.9"),
    ],
)
def test_study_yaml_is_validated_before_anything_runs(tmp_path, capsys, text, message):
    base = {"name": "s", "datasets": "[bloodmnist]", "sizes": "[28]"}
    key = text.split(":")[0]
    lines = [f"{k}: {v}" for k, v in base.items() if k != key] + [text]
    (tmp_path / "study.yaml").write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "run", tmp_path / "study.yaml", "--out", tmp_path / "out")
    one_line_error(code, err, message)
    assert not (tmp_path / "out").exists()


def test_verify_no_is_read_as_false(tmp_path):
    from medclassify.experiments import Study

    study = Study.from_dict({"name": "s", "datasets": ["bloodmnist"], "sizes": [28], "train": {"verify": "no"}})
    assert study.configs(tmp_path)[0].verify is False


@pytest.mark.parametrize(
    "args, message",
    [
        (["serve", "RUN", "--port", "99999"], "--port must be from 1 to 65535, got 99999"),
        (["serve", "RUN", "--port", "-1"], "--port must be from 1 to 65535, got -1"),
        (["serve", "RUN", "--max-upload-mb", "nan"], "--max-upload-mb must be a finite number > 0, got nan"),
        (["serve", "RUN", "--max-upload-mb", "inf"], "--max-upload-mb must be a finite number > 0, got inf"),
        (["models", "--classes", "-1"], "--classes must be from 2 to 10,000, got -1"),
        (["models", "--size", "100000"], "--size must be from 8 to 1024 pixels, got 100000"),
        (
            ["explain", "RUN", "IMAGE", "--layer", "classifier"],
            "--layer classifier: model 'paper-cnn' has that module, but its output is not a feature map",
        ),
    ],
)
def test_impossible_options_get_one_line(quadrant_run, tmp_path, capsys, args, message):
    image = tmp_path / "a.png"
    Image.fromarray(quadrant_images("top-left", 1)[0]).save(image)
    args = [quadrant_run if a == "RUN" else image if a == "IMAGE" else a for a in args]
    code, _, err = run_cli(capsys, *args)
    one_line_error(code, err, message)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda b: b["model"].update(num_classes=-3), "num_classes -3 is not a count >= 1"),
        (lambda b: b["preprocessing"].update(size=0), "image size 0"),
        (lambda b: b["dataset"].update(class_names=b["dataset"]["class_names"][:3]), "3 class names for 5 outputs"),
    ],
)
def test_hand_edited_bundles_get_one_line(quadrant_run, tmp_path, capsys, edit, message):
    bundle = torch.load(quadrant_run / "best.pt", weights_only=True)
    edit(bundle)
    torch.save(bundle, tmp_path / "edited.pt")
    image = tmp_path / "a.png"
    Image.fromarray(quadrant_images("top-left", 1)[0]).save(image)
    code, _, err = run_cli(capsys, "predict", tmp_path / "edited.pt", image)
    one_line_error(code, err, message)


def test_nproc_checks_the_data_once_before_launching(tmp_path, capsys):
    code, _, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "bloodmnist",
        "--data-dir",
        tmp_path / "empty",
        "--no-download",
        "--nproc",
        "2",
        "--out",
        tmp_path / "run",
    )
    one_line_error(code, err, "data file missing, nothing was trained; download bloodmnist.npz from")
    assert not (tmp_path / "run").exists()


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    shell = f"{sys.executable} -m medclassify datasets | true"  # the reader leaves before anything is written
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


@pytest.mark.filterwarnings(
    "ignore:Invalid value for VR DS"
)  # pydicom says so of the 'nan' this test writes on purpose
def test_non_finite_pixels_are_refused_per_file(quadrant_run, tmp_path, capsys):
    from test_inference import quadrant_dicom

    np.save(tmp_path / "nan.npy", np.full((28, 28), np.nan))
    np.save(tmp_path / "inf.npy", np.full((28, 28), np.inf))
    dicom = quadrant_dicom(tmp_path / "window.dcm", "top-left")
    import pydicom

    ds = pydicom.dcmread(dicom)
    ds.WindowCenter = "nan"
    ds.save_as(dicom)
    ok = tmp_path / "ok.png"
    Image.fromarray(quadrant_images("bottom-left", 1)[0]).save(ok)
    code, out, err = run_cli(capsys, "predict", quadrant_run, tmp_path / "nan.npy", tmp_path / "inf.npy", dicom, ok)
    assert code == 0 and "bottom-left" in out and "nan.npy" not in out and "window.dcm" not in out
    assert "nan.npy: holds NaN or infinite pixel values" in err and "inf.npy: holds NaN or infinite pixel values" in err
    assert "window.dcm: Window Center/Width (nan, 1200.0) are not finite numbers" in err


# ---- what a new user hit ----------------------------------------------------------------------


def test_predict_table_stays_aligned_with_long_class_names(quadrant_run, tmp_path, capsys):
    bundle = torch.load(quadrant_run / "best.pt", weights_only=True)
    bundle["dataset"]["class_names"] = [
        f"{name} with a very long descriptive class name indeed" for name in QUADRANT_CLASSES
    ]
    torch.save(bundle, tmp_path / "long.pt")
    for i, name in enumerate(("top-left", "bottom-right")):
        Image.fromarray(quadrant_images(name, 1)[0]).save(tmp_path / f"{i}.png")
    code, out, _ = run_cli(
        capsys, "predict", tmp_path / "long.pt", tmp_path / "0.png", tmp_path / "1.png", "--top", "1"
    )
    header, *rows = out.splitlines()
    end = header.index("prob") + len("prob")  # right-aligned probabilities end under the header's word
    assert code == 0 and len(rows) == 2
    assert all(float(row[end - 5 : end]) > 0.5 and row[end] == " " for row in rows), out
    assert all("…" in row for row in rows)


def test_resuming_a_finished_run_changes_nothing(finished_run, capsys):
    before = snapshot(finished_run)
    code, out, err = run_cli(capsys, "train", "--out", finished_run, "--resume")  # reads the run's own config
    assert code == 0 and "is already complete; nothing was trained or written" in err and "test: acc" in out
    assert snapshot(finished_run) == before


def test_demo_twice_is_complete_the_second_time(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDCLASSIFY_DATA", str(tmp_path / "data"))
    args = ["demo", "--out", tmp_path / "demo", "--epochs", "1", "--quiet"]
    assert run_cli(capsys, *args)[0] == 0
    before = snapshot(tmp_path / "demo")
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "already complete" in err and snapshot(tmp_path / "demo") == before


def test_help_and_docs(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and not any(line.count("(default:") > 1 for line in text.split("\n  --"))
    assert "{none,cosine,onecycle,step}" in text and "{auc,acc,f1,loss}" in text
    code, out, _ = run_cli(capsys)
    assert code == 2 and "examples:" in out and "predict" in out
    guide = (Path(__file__).parent.parent / "docs" / "guide" / "predict-explain-export.md").read_text()
    python_block = guide.split("From Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    assert "from pathlib import Path" in python_block and "Path(" in python_block


def test_write_overlays_takes_a_str_folder(quadrant_run, tmp_path):
    from medclassify.explain import explain_images, write_overlays
    from medclassify.inference import Predictor

    explanations, _ = explain_images(
        Predictor.from_run(quadrant_run, backend="torch"), [quadrant_images("top-left", 1)[0]]
    )
    paths = write_overlays(explanations, str(tmp_path / "cams"))
    assert [p.name for p in paths] == ["array_0_layercam.png"] and paths[0].is_file()


def test_legends_sit_outside_and_single_epochs_show(tmp_path):
    import matplotlib.pyplot as plt

    from medclassify.reporting import figures

    class Fake:
        def __init__(self, model):
            self.dataset, self.size, self.model, self.variant = "bloodmnist", 28, model, None
            self.name = f"bloodmnist_28_{model}"
            self.histories = [[{"train_loss": "1.0", "val_loss": "1.2"}]]

    experiments = [Fake("paper-cnn"), Fake("bn-cnn")]
    figure, ax = plt.subplots()
    for e, level in zip(experiments, (0.627, 0.841)):
        ax.plot([0, 1, 2], [level] * 3, label=e.name)
    figures._legend_below(ax)
    figure.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 <= ax.get_window_extent().y0  # below the plotting area, over no curve
    assert all(t.get_fontsize() >= 8 for t in ax.get_legend().get_texts())
    plt.close(figure)
    figures.loss_curves(experiments, tmp_path)
    assert (tmp_path / "loss_curves.png").is_file()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "save_figure", lambda fig, path: fig)
        drawn = figures.loss_curves(experiments, tmp_path)
    assert all(line.get_marker() == "o" for line in drawn.axes[0].get_lines())
    plt.close("all")


def test_a_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    data = tmp_path / "new" / "data"
    code, _, err = run_cli(capsys, "train", "--dataset", "bloodmnist", "--data-dir", data, "--out", tmp_path / "run")
    one_line_error(code, err, "could not be downloaded (network is unreachable)")
    assert not (tmp_path / "new").exists()


def test_image_folder_runs_are_named_after_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_image_folder(tmp_path / "chest_xray", per_class=4)
    assert TrainConfig(data_dir=str(root), size=64).run_dir() == Path("runs") / "chest_xray_64_paper-cnn_seed0"


# ---- the newer commands: split cache, calibrate, ensemble, tune, track, Hub export and push ------------


@pytest.fixture
def run_copy(blood_run, tmp_path) -> Path:
    """A copy of the session's finished bloodmnist run that a test may damage or change."""
    return Path(shutil.copytree(blood_run.run_dir, tmp_path / "run"))


def unchanged_after(folder: Path, action) -> None:
    before = snapshot(folder)
    action()
    assert snapshot(folder) == before


def test_an_ensemble_is_never_written_over_a_member_a_run_folder_or_a_foreign_file(run_copy, tmp_path, capsys):
    other = Path(shutil.copytree(run_copy, tmp_path / "other"))
    foreign = tmp_path / "notes.pt"
    foreign.write_text("mine")
    cases = [
        (run_copy / "best.pt", "is one of the members' bundles"),
        (run_copy / "ensemble.pt", "is a run folder, whose files describe its own model"),
        (foreign, "exists and is not an ensemble bundle"),
    ]
    for out, message in cases:

        def refused(out=out, message=message):
            code, _, err = run_cli(capsys, "ensemble", run_copy, other, "--out", out)
            one_line_error(code, err, message)

        unchanged_after(tmp_path, refused)
    code, _, err = run_cli(capsys, "ensemble", run_copy, run_copy / "best.pt", "--out", tmp_path / "e.pt")
    one_line_error(code, err, "given twice; an ensemble's members are different models")
    assert foreign.read_text() == "mine" and not (tmp_path / "e.pt").exists()


def test_a_hub_export_keeps_files_it_did_not_write_and_refuses_another_kind_of_model_folder(run_copy, tmp_path, capsys):
    assert main(["export", str(run_copy), "--format", "hub"]) == 0
    hub = run_copy / "hub"
    (hub / ".git").mkdir()
    (hub / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (hub / "NOTES.md").write_text("my notes")
    assert main(["export", str(run_copy), "--format", "hub"]) == 0
    assert (hub / ".git" / "HEAD").is_file() and (hub / "NOTES.md").read_text() == "my notes"
    assert json.loads((hub / "config.json").read_text())["format"] == "medclassify.hub"
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bert / "model.safetensors").write_bytes(b"weights")
    (bert / "vocab.txt").write_text("[CLS]\n")
    capsys.readouterr()

    def refused():
        code, _, err = run_cli(capsys, "export", run_copy, "--format", "hub", "--out", bert)
        one_line_error(code, err, "exists and is not a medclassify Hub folder (no 'medclassify.hub' format")

    unchanged_after(bert, refused)
    code, _, err = run_cli(capsys, "export", run_copy, "--format", "hub", "--tolerance", "-1")
    one_line_error(code, err, "--tolerance must be a number >= 0, got -1.0")


def test_a_data_file_behind_a_link_of_another_name_trains_and_writes_medmnist_files(tmp_path, capsys):
    data = tmp_path / "shared"
    write_medmnist_npz(data / "datasets" / "blood_v2.npz")
    (data / "bloodmnist.npz").symlink_to(Path("datasets") / "blood_v2.npz")
    code, _, err = run_cli(
        capsys, "train", "--dataset", "bloodmnist", "--data-dir", data, "--no-verify", "--epochs", "1",
        "--out", tmp_path / "run", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "run" / "medmnist").iterdir())
    assert [name.split("_[")[0] for name in written] == ["bloodmnist_test", "bloodmnist_val"]
    predictions = (tmp_path / "run" / "medmnist" / written[0]).read_text().splitlines()
    assert len(predictions) == 80 and predictions[0].startswith("0,")


def test_a_new_temperature_refits_the_operating_point_and_conformal_sets(run_copy, capsys):
    assert main(["calibrate", str(run_copy), "--calibration", "none", "--conformal", "0.2", "--threshold", "0.5",
                 "--positive-class", "basophil"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["calibrate", str(run_copy)]) == 0
    err = capsys.readouterr().err
    assert "the operating point (0.5 for 'basophil') and the conformal sets (lac, miscoverage 0.2)" in err
    bundle = torch.load(run_copy / "best.pt", weights_only=True)
    metrics = json.loads((run_copy / "metrics.json").read_text())
    temperature = bundle["calibration"]["temperature"]
    assert temperature != 1.0
    assert bundle["conformal"]["temperature"] == bundle["operating_point"]["temperature"] == temperature
    assert metrics["conformal"]["threshold"] == bundle["conformal"]["threshold"]
    # the stored figures are those of the predictor's own sets on the test split
    from medclassify.evaluation.conformal import prediction_sets
    from medclassify.inference.predictor import Predictor
    from medclassify.runs import RunDir, load_run_data

    data = load_run_data(RunDir(run_copy).config())
    test = data.splits["test"]
    probabilities = Predictor.from_run(run_copy, backend="torch").predict_pixels(test.images.numpy())
    sets = prediction_sets(probabilities, bundle["conformal"])
    covered = sets[np.arange(len(sets)), test.labels.numpy()].mean()
    assert covered == pytest.approx(metrics["conformal"]["test"]["coverage"])


def test_calibrating_on_other_data_warns_and_records_which_data(run_copy, tmp_path, capsys):
    other = tmp_path / "other-data"
    write_medmnist_npz(other / "bloodmnist.npz", seed=9)
    assert main(["calibrate", str(run_copy), "--data-dir", str(other)]) == 0
    err = capsys.readouterr().err
    assert "the data differ from those the run was trained on (MD5" in err
    bundle = torch.load(run_copy / "best.pt", weights_only=True)
    assert bundle["calibration"]["data_md5"] == hashlib.md5((other / "bloodmnist.npz").read_bytes()).hexdigest()


def _cache_of(data_dir: Path) -> Path:
    from medclassify.data import load_dataset

    return Path(load_dataset("bloodmnist", 28, data_dir, verify=False).source["cache"])


def _edit_header(path: Path, shape: tuple, dtype: str = "|u1") -> None:
    """Rewrite an .npy header in place (same length): what a hand edit or a bad copy leaves."""
    raw = path.read_bytes()
    length = 10 + int.from_bytes(raw[8:10], "little")
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}".ljust(length - 11) + "\n"
    path.write_bytes(raw[:10] + header.encode() + raw[length:])


@pytest.mark.parametrize(
    "damage",
    ["fewer_images", "more_images", "other_dtype", "bad_magic", "sums_missing", "zero_count", "wrong_sums",
     "labels_out_of_range", "float_labels"],
)  # fmt: skip
def test_a_damaged_split_cache_is_built_again_not_trusted(blood_dir, damage):
    from medclassify.data import load_dataset

    folder = _cache_of(blood_dir)
    record_path = folder / "cache.json"
    record = json.loads(record_path.read_text())
    images, labels = folder / "train_images.npy", folder / "train_labels.npy"
    if damage == "fewer_images":
        _edit_header(images, (100, 3, 28, 28))
    elif damage == "more_images":
        _edit_header(images, (999, 3, 28, 28))
    elif damage == "other_dtype":
        _edit_header(images, (160, 3, 28, 28), "<i2")
    elif damage == "bad_magic":
        images.write_bytes(b"XXXXXX" + images.read_bytes()[6:])
    elif damage in ("sums_missing", "zero_count", "wrong_sums"):
        sums = record["splits"]["train"]["sums"]
        if damage == "sums_missing":
            del record["splits"]["train"]["sums"]
        elif damage == "zero_count":
            sums["count"] = 0
        else:
            sums["total"] = [0, 0, 0]
        record_path.write_text(json.dumps(record))
    else:
        values = np.load(labels)
        np.save(labels, values + 50 if damage == "labels_out_of_range" else values.astype(np.float64))
    with pytest.warns(UserWarning, match="it is built again"):
        data = load_dataset("bloodmnist", 28, blood_dir, verify=False)
    with np.load(blood_dir / "bloodmnist.npz") as source:
        assert np.array_equal(data.splits["train"].images.numpy(), source["train_images"].transpose(0, 3, 1, 2))
        assert np.array_equal(data.splits["train"].labels.numpy(), source["train_labels"][:, 0])
    train_split = data.splits["train"]
    from medclassify.data import compute_normalization

    stats = compute_normalization(train_split, "dataset")
    assert np.allclose(stats.mean, (train_split.images.numpy() / 255.0).mean(axis=(0, 2, 3)), atol=1e-6)


def test_verify_cache_recomputes_the_md5_that_size_and_time_stand_for(blood_dir, tmp_path, capsys):
    from medclassify.data import load_dataset

    with np.load(blood_dir / "bloodmnist.npz") as source:
        arrays = dict(source)
    data_dir = tmp_path / "stored"
    data_dir.mkdir()
    path = data_dir / "bloodmnist.npz"
    np.savez(path, **arrays)  # uncompressed, so that other pixels keep the size
    blood_dir = data_dir
    first = load_dataset("bloodmnist", 28, blood_dir, verify=False)
    stat = path.stat()
    replacement = tmp_path / "replacement.npz"
    np.savez(replacement, **{k: 255 - v if k.endswith("images") else v for k, v in arrays.items()})
    assert replacement.stat().st_size == stat.st_size  # same size, other pixels
    shutil.copyfile(replacement, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old time: only the MD5 tells
    trusted = load_dataset("bloodmnist", 28, blood_dir, verify=False)
    assert trusted.source["md5"] == first.source["md5"]  # the README says so: size and time stand for the MD5
    checked = load_dataset("bloodmnist", 28, blood_dir, verify=False, verify_cache=True)
    assert checked.source["md5"] == hashlib.md5(path.read_bytes()).hexdigest() != first.source["md5"]
    with np.load(path) as source:
        assert np.array_equal(checked.splits["test"].images.numpy(), source["test_images"].transpose(0, 3, 1, 2))
    code, out, err = run_cli(capsys, "cache", "bloodmnist", "--data-dir", blood_dir, "--no-verify", "--verify-cache")
    assert code == 0 and out.startswith(f"split cache {checked.source['cache']}: "), err


def test_an_unreachable_mlflow_server_stops_train_and_track_at_once_with_no_folder(run_copy, blood_dir, tmp_path, capsys, monkeypatch):  # fmt: skip
    import time

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    started = time.perf_counter()
    code, _, err = run_cli(
        capsys, "train", "--dataset", "bloodmnist", "--data-dir", blood_dir, "--no-verify", "--track", "mlflow",
        "--out", tmp_path / "tracked",
    )  # fmt: skip
    one_line_error(code, err, "MLFLOW_TRACKING_URI http://127.0.0.1:9: the tracking server does not answer")
    assert not (tmp_path / "tracked").exists()
    code, _, err = run_cli(capsys, "track", run_copy, "--to", "mlflow")
    one_line_error(code, err, "the tracking server does not answer")
    assert time.perf_counter() - started < 30
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://example/store")
    code, _, err = run_cli(capsys, "track", run_copy, "--to", "mlflow")
    one_line_error(code, err, "MLFLOW_TRACKING_URI ftp://example/store: unsupported scheme 'ftp'")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").write_text("a file")
    code, _, err = run_cli(capsys, "track", run_copy, "--to", "mlflow")
    one_line_error(code, err, "mlruns: is a file, not an MLflow store")


def test_track_reads_every_record_before_it_sends_anything(run_copy, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    history = run_copy / "history.csv"
    rows = history.read_text().splitlines()
    history.write_text("\n".join([rows[0], rows[1].replace(rows[1].split(",")[2], "abc", 1), *rows[2:]]) + "\n")
    code, _, err = run_cli(capsys, "track", run_copy, "--to", "tensorboard")
    one_line_error(code, err, "history.csv: line 2, column val_loss: expected a number, got 'abc'")
    history.unlink()
    code, _, err = run_cli(capsys, "track", run_copy, "--to", "tensorboard", "mlflow")
    one_line_error(code, err, "history.csv: missing from the run folder")
    assert not (run_copy / "tensorboard").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("damage", ["metrics_broken", "metrics_list", "predictions_missing", "predictions_bad"])
@pytest.mark.parametrize("command", ["card", "calibrate", "robustness", "export"])
def test_damaged_run_records_are_one_line_and_change_nothing(run_copy, capsys, damage, command):
    if damage == "metrics_broken":
        (run_copy / "metrics.json").write_text('{"val": ')
    elif damage == "metrics_list":
        (run_copy / "metrics.json").write_text("[]")
    elif damage == "predictions_missing":
        (run_copy / "predictions.csv").unlink()
    else:
        lines = (run_copy / "predictions.csv").read_text().splitlines()
        lines[2] = lines[2].rsplit(",", 1)[0] + ",abc"
        (run_copy / "predictions.csv").write_text("\n".join(lines) + "\n")
    args = {"card": [], "calibrate": [], "robustness": ["--severities", "1"], "export": ["--format", "hub"]}[command]
    expected = {
        "metrics_broken": "metrics.json: not readable",
        "metrics_list": "metrics.json: expected a mapping with the 'val' and 'test' figures",
        "predictions_missing": "predictions.csv: missing from the run folder",
        "predictions_bad": "predictions.csv: not a predictions table",
    }[damage]

    def refused():
        code, _, err = run_cli(capsys, command, run_copy, *args)
        one_line_error(code, err, expected)

    unchanged_after(run_copy, refused)


def test_push_checks_the_repository_token_offline_mode_and_endpoint_before_any_work(run_copy, capsys, monkeypatch):
    import http.server
    import threading
    import time

    pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(run_copy.parent / "hf-home"))  # no saved login
    before = snapshot(run_copy)
    for repo in ("../evil", "alice/has space", "alice/" + "x" * 300):
        code, _, err = run_cli(capsys, "push", run_copy, "--repo", repo)
        one_line_error(code, err, "expected OWNER/NAME of letters, digits")
    code, _, err = run_cli(capsys, "push", run_copy, "--repo", "alice/x")
    one_line_error(code, err, "--token: none given and no Hub access token found; set HF_TOKEN or run 'hf auth login'")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "push", run_copy, "--repo", "alice/x", "--token", "hf_x")
    one_line_error(code, err, "HF_HUB_OFFLINE is set")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "push", run_copy, "--repo", "alice/x", "--token", "hf_x")
    one_line_error(code, err, "the Hub at http://127.0.0.1:9 cannot be reached")
    assert time.perf_counter() - started < 10

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "Invalid credentials in Authorization header"}')

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        code, _, err = run_cli(capsys, "push", run_copy, "--repo", "alice/x", "--token", "hf_wrong")
        one_line_error(code, err, "the Hub answered HTTP 401: the token was refused; nothing was uploaded")
    finally:
        server.shutdown()
    assert snapshot(run_copy) == before


def test_a_search_keeps_its_metric_and_space_and_checks_its_file(blood_dir, tmp_path, capsys, monkeypatch):
    import yaml

    pytest.importorskip("optuna")
    monkeypatch.chdir(tmp_path)
    base = {"dataset": "bloodmnist", "epochs": 1, "verify": False, "data_dir": str(blood_dir), "num_threads": 2}
    search = {"name": "s", "base": base, "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
              "metric": "val_loss", "trials": 1}  # fmt: skip

    def write(**changes) -> Path:
        path = tmp_path / "search.yaml"
        path.write_text(yaml.safe_dump({**search, **changes}))
        return path

    out = tmp_path / "tune"
    assert main(["tune", str(write()), "--out", str(out), "--no-retrain", "--quiet"]) == 0
    capsys.readouterr()
    trials = (out / "trials.csv").read_text()
    for changes, message in (
        ({"metric": "val_auc"}, "metric val_loss (minimize) -> val_auc (maximize)"),
        ({"space": {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}}, "space.lr 0.0001..0.01 log -> 0.0001..0.1 log"),
    ):
        code, _, err = run_cli(capsys, "tune", write(**changes), "--out", out, "--no-retrain")
        one_line_error(code, err, message)
        assert "start a new search with another --out" in err
    assert (out / "trials.csv").read_text() == trials
    for changes, message in (
        ({"space": {"lr": {"low": 1e-4, "high": 1e-2, "step": 0}}}, "'step' must be > 0"),
        ({"space": {"lr": {"low": 1e-4, "high": 1e-2, "step": -1}}}, "'step' must be > 0"),
        ({"seed": 2**32}, "seed: Input should be less than or equal to 4294967295"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"trials": None, "timeout": "5 parsecs"}, "search.yaml: timeout: expected a duration"),
    ):
        code, _, err = run_cli(capsys, "tune", write(**changes), "--out", tmp_path / "other")
        one_line_error(code, err, message)
    (tmp_path / "a-file").write_text("x")
    code, _, err = run_cli(capsys, "tune", write(), "--out", tmp_path / "a-file")
    one_line_error(code, err, str(tmp_path / "a-file") + ": is a file; a search writes a folder")
    code, _, err = run_cli(capsys, "tune", write(), "--out", tmp_path / "a-file" / "under")
    one_line_error(code, err, "cannot write (Not a directory)")
    code, _, err = run_cli(capsys, "tune", write(), "--address", "auto")
    one_line_error(code, err, "--address needs --backend ray")
    assert not (tmp_path / "runs").exists()


def test_a_search_whose_every_trial_fails_exits_non_zero_and_says_why(blood_dir, tmp_path, capsys):
    import yaml

    pytest.importorskip("optuna")
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({
        "name": "failing", "base": {"dataset": "bloodmnist", "epochs": 2, "verify": False, "data_dir": str(blood_dir)},
        "space": {"warmup_epochs": {"low": 2, "high": 3}}, "metric": "val_auc", "trials": 2,
    }))  # fmt: skip
    code, _, err = run_cli(capsys, "tune", path, "--out", tmp_path / "tune", "--quiet")
    one_line_error(code, err, "every trial of the search failed (2); the first (trial 0): ")
    assert "warmup_epochs" in err and (tmp_path / "tune" / "trials.csv").is_file()


def test_a_search_folder_in_use_by_another_search_is_refused(blood_dir, tmp_path, capsys):
    import yaml

    pytest.importorskip("optuna")
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"name": "busy", "base": {"dataset": "bloodmnist"},
                                    "space": {"lr": {"low": 1e-4, "high": 1e-2}}, "trials": 1}))  # fmt: skip
    out = tmp_path / "tune"
    out.mkdir()
    with held_by_another_process(out, "tune") as pid:
        code, _, err = run_cli(capsys, "tune", path, "--out", out, "--data-dir", blood_dir)
        one_line_error(code, err, f"is in use by another medclassify process (tune PID {pid} on")
        assert sorted(p.name for p in out.iterdir()) == [".medclassify.lock"]


def test_an_unreachable_ray_cluster_is_one_line_within_seconds(tmp_path, capsys):
    import time

    import yaml

    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "base": {"dataset": "bloodmnist"},
                                    "space": {"lr": {"low": 1e-4, "high": 1e-2}}, "trials": 1}))  # fmt: skip
    started = time.perf_counter()
    code, _, err = run_cli(
        capsys, "tune", path, "--backend", "ray", "--address", "ray://127.0.0.1:9", "--out", tmp_path / "tune"
    )
    one_line_error(code, err, "--address ray://127.0.0.1:9: no Ray cluster answers there within 5 s")
    assert time.perf_counter() - started < 15 and not (tmp_path / "tune").exists()
    code, _, err = run_cli(capsys, "tune", path, "--backend", "ray", "--address", "nonsense")
    one_line_error(code, err, "--address nonsense: expected auto, HOST:PORT or ray://HOST:PORT")


def test_every_seed_option_checks_its_range(run_copy, blood_dir, tmp_path, capsys):
    huge = "99999999999999999999"
    code, _, err = run_cli(capsys, "robustness", run_copy, "--seed", huge)
    one_line_error(code, err, f"--seed must be a whole number from 0 to 4294967295, got {huge}")
    code, _, err = run_cli(capsys, "train", "--dataset", "bloodmnist", "--data-dir", blood_dir, "--seed", "-1",
                           "--out", tmp_path / "r")  # fmt: skip
    one_line_error(code, err, "--seed must be a whole number from 0 to 4294967295, got -1")
    study = tmp_path / "study.yaml"
    study.write_text(f"name: s\ndatasets: [bloodmnist]\nsizes: [28]\nseeds: [0, {2**40}]\n")
    code, _, err = run_cli(capsys, "run", study, "--data-dir", blood_dir, "--out", tmp_path / "study")
    one_line_error(code, err, "seeds.1: Input should be less than or equal to 4294967295")
    study.write_text("name: s\ndatasets: [bloodmnist]\nsizes: [28]\n")
    code, _, err = run_cli(capsys, "run", study, "--seeds", "100000000000", "--out", tmp_path / "study")
    one_line_error(code, err, "--seeds must be from 1 to 1000")
    code, _, err = run_cli(capsys, "run", study, "--address", "auto", "--out", tmp_path / "study")
    one_line_error(code, err, "--address needs --backend ray")
    assert not (tmp_path / "study").exists() and not (tmp_path / "r").exists()


def test_an_impossible_operating_point_is_refused_before_the_first_epoch(blood_dir, tmp_path, capsys, monkeypatch):
    import medclassify.training.trainer as trainer_module

    def no_epoch(*args, **kwargs):
        raise AssertionError("an epoch ran")

    monkeypatch.setattr(trainer_module, "train_one_epoch", no_epoch)
    common = ["train", "--dataset", "bloodmnist", "--data-dir", blood_dir, "--no-verify", "--out", tmp_path / "r"]
    code, _, err = run_cli(capsys, *common, "--threshold", "youden")
    one_line_error(code, err, "--positive-class is needed for an operating point of a multi-class task")
    code, _, err = run_cli(capsys, *common, "--threshold", "youden", "--positive-class", "nope")
    one_line_error(code, err, "--positive-class nope: not a class of this model")
    assert not (tmp_path / "r").exists()


def test_options_that_need_another_are_refused_without_it(run_copy, blood_dir, tmp_path, capsys):
    train_args = ["train", "--dataset", "bloodmnist", "--data-dir", blood_dir, "--out", tmp_path / "r"]
    for extra, message in (
        (["--mondrian"], "--mondrian needs --conformal (the miscoverage"),
        (["--conformal-score", "aps"], "--conformal-score needs --conformal (the miscoverage"),
        (["--positive-class", "basophil"], "--positive-class needs --threshold (the rule"),
        (["--time-budget", "999999999h", "--epochs", "1"], "--time-budget must be longer than 0 s and at most 30 days"),
    ):
        code, _, err = run_cli(capsys, *train_args, *extra)
        one_line_error(code, err, message)
    for extra, message in (
        (["--mondrian"], "--mondrian needs --conformal (the miscoverage"),
        (["--conformal-score", "aps"], "--conformal-score needs --conformal (the miscoverage"),
        (["--positive-class", "basophil"], "--positive-class needs --threshold (the rule"),
    ):

        def refused(extra=extra, message=message):
            code, _, err = run_cli(capsys, "calibrate", run_copy, *extra)
            one_line_error(code, err, message)

        unchanged_after(run_copy, refused)
    assert not (tmp_path / "r").exists()


def test_an_explicit_epoch_count_caps_what_a_time_budget_plans():
    from medclassify.training.budget import plan_epochs

    free = plan_epochs(600, 10, 1000, 4000, 12000, 2000, 4000)
    capped = plan_epochs(600, 10, 1000, 4000, 12000, 2000, 4000, max_epochs=3)
    assert free.epochs > 3 and capped.epochs == 3
    assert plan_epochs(20, 1, 1000, 4000, 1000, 200, 400, max_epochs=50).epochs < 50


def test_a_studys_time_left_is_estimated_per_model_and_size():
    from medclassify.experiments.runner import seconds_left

    fast = [TrainConfig(model="paper-cnn", size=28, seed=s) for s in range(3)]
    slow = TrainConfig(model="resnet18", size=28, seed=0)
    done = [(config, 10.0) for config in fast] + [(slow, 300.0)]
    left = [TrainConfig(model="resnet18", size=28, seed=1), TrainConfig(model="paper-cnn", size=28, seed=3)]
    assert seconds_left(done, left) == 310.0  # not 2 x the average 82.5
    assert seconds_left(done, left, workers=2) == 155.0
    bigger = [TrainConfig(model="paper-cnn", size=64, seed=0)]
    assert seconds_left(done, bigger) == 10.0  # no 64 px run yet: its model's time
    assert seconds_left(done, [TrainConfig(model="bn-cnn", size=28)]) == pytest.approx(82.5)  # nothing alike: all
