"""Bad inputs a new user or an attacker gave medclassify, each kept answered by one clear line, a
non-zero exit and an untouched run folder (issue 11; the numbers in the comments are its items).
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
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import QUADRANT_CLASSES, quadrant_images, write_image_folder, write_medmnist_npz
from medclassify.cli import main
from medclassify.config import TrainConfig
from medclassify.errors import TrainingDiverged
from medclassify.training import train


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, message: str) -> None:
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


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


@pytest.fixture
def finished_run(blood_dir, tmp_path) -> Path:
    return train(tiny_config(blood_dir, tmp_path / "run")).run_dir


# ---- lost or mixed results ------------------------------------------------------------------


def test_6_a_finished_run_without_last_pt_is_not_overwritten(finished_run, blood_dir, capsys):
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


def test_7_a_folder_in_use_is_refused_and_a_stale_lock_is_taken_over(blood_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".medclassify.lock").write_text(
            json.dumps({"pid": holder.pid, "host": os.uname().nodename, "command": "train", "since": "now"})
        )
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
        one_line_error(code, err, f"is in use by another medclassify process (train PID {holder.pid} on")
        assert sorted(p.name for p in out.iterdir()) == [".medclassify.lock"]
    finally:
        holder.kill()
        holder.wait()
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
    assert code == 0 and f"removing the lock of PID {holder.pid}" in err
    assert not (out / ".medclassify.lock").exists() and (out / "metrics.json").is_file()


def test_7_evaluate_and_export_take_the_lock_too(finished_run, capsys):
    (finished_run / ".medclassify.lock").write_text(
        json.dumps({"pid": os.getppid(), "host": os.uname().nodename, "command": "train"})
    )
    before = snapshot(finished_run)
    for command in (["evaluate", finished_run], ["export", finished_run]):
        code, _, err = run_cli(capsys, *command)
        one_line_error(code, err, "is in use by another medclassify process")
    assert snapshot(finished_run) == before


def test_8_evaluate_refuses_a_bundle_of_another_class_count(finished_run, blood_dir, tmp_path, capsys):
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


def test_9_evaluating_last_pt_keeps_the_best_checkpoints_records(finished_run, capsys):
    before = {name: (finished_run / name).read_bytes() for name in ("metrics.json", "predictions.csv")}
    code, out, _ = run_cli(capsys, "evaluate", finished_run, "--checkpoint", "last")
    assert code == 0 and "metrics_last.json and predictions_last.csv" in out
    assert {name: (finished_run / name).read_bytes() for name in before} == before
    assert json.loads((finished_run / "metrics_last.json").read_text())["checkpoint"] == "last.pt"


@pytest.mark.slow
def test_9_a_study_tolerates_foreign_files_in_its_run_folders(tmp_path, capsys):
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


def test_10_an_edited_or_broken_model_onnx_is_not_trusted(exported_run, tmp_path, capsys):
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
    code, _, err = run_cli(capsys, "predict", run / "model.onnx", image)
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


def test_11_a_diverging_run_stops_at_the_first_non_finite_loss(blood_dir, tmp_path, capsys):
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


def test_11_divergence_later_keeps_last_pt_of_the_last_finite_epoch(blood_dir, tmp_path, monkeypatch):
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


def test_12_class_folders_named_like_report_keys(tmp_path):
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


def test_13_npz_headers_are_checked_before_loading(quadrant_run, blood_dir, tmp_path, capsys):
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


def test_14_unwritable_outputs_get_one_line(finished_run, quadrant_run, blood_dir, tmp_path, capsys, monkeypatch):
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
def test_15_study_yaml_is_validated_before_anything_runs(tmp_path, capsys, text, message):
    base = {"name": "s", "datasets": "[bloodmnist]", "sizes": "[28]"}
    key = text.split(":")[0]
    lines = [f"{k}: {v}" for k, v in base.items() if k != key] + [text]
    (tmp_path / "study.yaml").write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "run", tmp_path / "study.yaml", "--out", tmp_path / "out")
    one_line_error(code, err, message)
    assert not (tmp_path / "out").exists()


def test_15_verify_no_is_read_as_false(tmp_path):
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
def test_16_impossible_options_get_one_line(quadrant_run, tmp_path, capsys, args, message):
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
def test_16_hand_edited_bundles_get_one_line(quadrant_run, tmp_path, capsys, edit, message):
    bundle = torch.load(quadrant_run / "best.pt", weights_only=True)
    edit(bundle)
    torch.save(bundle, tmp_path / "edited.pt")
    image = tmp_path / "a.png"
    Image.fromarray(quadrant_images("top-left", 1)[0]).save(image)
    code, _, err = run_cli(capsys, "predict", tmp_path / "edited.pt", image)
    one_line_error(code, err, message)


def test_16_nproc_checks_the_data_once_before_launching(tmp_path, capsys):
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


def test_16_a_closed_pipe_is_not_a_traceback(tmp_path):
    shell = f"{sys.executable} -m medclassify datasets | true"  # the reader leaves before anything is written
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


@pytest.mark.filterwarnings(
    "ignore:Invalid value for VR DS"
)  # pydicom says so of the 'nan' this test writes on purpose
def test_17_non_finite_pixels_are_refused_per_file(quadrant_run, tmp_path, capsys):
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


def test_19_predict_table_stays_aligned_with_long_class_names(quadrant_run, tmp_path, capsys):
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


def test_20_resuming_a_finished_run_changes_nothing(finished_run, capsys):
    before = snapshot(finished_run)
    code, out, err = run_cli(capsys, "train", "--out", finished_run, "--resume")  # reads the run's own config
    assert code == 0 and "is already complete; nothing was trained or written" in err and "test: acc" in out
    assert snapshot(finished_run) == before


def test_20_demo_twice_is_complete_the_second_time(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDCLASSIFY_DATA", str(tmp_path / "data"))
    args = ["demo", "--out", tmp_path / "demo", "--epochs", "1", "--quiet"]
    assert run_cli(capsys, *args)[0] == 0
    before = snapshot(tmp_path / "demo")
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "already complete" in err and snapshot(tmp_path / "demo") == before


def test_21_help_and_docs(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and not any(line.count("(default:") > 1 for line in text.split("\n  --"))
    assert "{none,cosine,onecycle,step}" in text and "{auc,acc,f1,loss}" in text
    code, out, _ = run_cli(capsys)
    assert code == 2 and "examples:" in out and "predict" in out
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    python_block = readme.split("From Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    assert "from pathlib import Path" in python_block and "Path(" in python_block


def test_21_write_overlays_takes_a_str_folder(quadrant_run, tmp_path):
    from medclassify.explain import explain_images, write_overlays
    from medclassify.inference import Predictor

    explanations, _ = explain_images(
        Predictor.from_run(quadrant_run, backend="torch"), [quadrant_images("top-left", 1)[0]]
    )
    paths = write_overlays(explanations, str(tmp_path / "cams"))
    assert [p.name for p in paths] == ["array_0_gradcam.png"] and paths[0].is_file()


def test_22_bar_charts_start_at_zero_legends_sit_outside_and_single_epochs_show(tmp_path):
    import matplotlib.pyplot as plt

    from medclassify.reporting import figures

    class Fake:
        def __init__(self, name, score):
            self.name, self.score = name, score
            self.histories = [[{"train_loss": "1.0", "val_loss": "1.2"}]]

        def mean(self, metric):
            return self.score

        def std(self, metric):
            return 0.0

    experiments = [Fake("blood_28_paper-cnn", 0.627), Fake("blood_28_bn-cnn", 0.841)]
    figure, ax = plt.subplots()
    figures._metric_bars(ax, experiments, figures.experiment_colours(experiments))
    figures._legend_below(ax)
    assert ax.get_ylim()[0] == 0.0
    figure.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 <= ax.get_window_extent().y0  # below the plotting area, over no bar
    plt.close(figure)
    figures.loss_curves(experiments, tmp_path)
    assert (tmp_path / "loss_curves.png").is_file()
    figure, ax = plt.subplots()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "save_figure", lambda fig, path: fig)
        drawn = figures.loss_curves(experiments, tmp_path)
    assert all(line.get_marker() == "o" for line in drawn.axes[0].get_lines())
    plt.close("all")


def test_23_a_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    data = tmp_path / "new" / "data"
    code, _, err = run_cli(capsys, "train", "--dataset", "bloodmnist", "--data-dir", data, "--out", tmp_path / "run")
    one_line_error(code, err, "could not be downloaded (network is unreachable)")
    assert not (tmp_path / "new").exists()


def test_23_image_folder_runs_are_named_after_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_image_folder(tmp_path / "chest_xray", per_class=4)
    assert TrainConfig(data_dir=str(root), size=64).run_dir() == Path("runs") / "chest_xray_64_paper-cnn_seed0"
