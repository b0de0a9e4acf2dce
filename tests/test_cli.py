import json
import os
import subprocess
import sys

import pytest

from medclassify.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "nosuchmnist"], "unknown dataset 'nosuchmnist'"),
        (["--dataset", "bloodmnist", "--model", "nosuchnet"], "unknown model 'nosuchnet'"),
        (["--dataset", "bloodmnist", "--size", "30"], "--size 30 is not available for bloodmnist"),
        (["--dataset", "bloodmnist", "--lr", "0"], "--lr must be a number > 0"),
        (["--dataset", "bloodmnist", "--epochs", "0"], "--epochs must be a whole number >= 1"),
        (
            ["--dataset", "bloodmnist", "--config", "/nonexistent/run.yaml"],
            "/nonexistent/run.yaml: cannot read the YAML config",
        ),
    ],
)
def test_train_errors_are_one_line_with_exit_code_2(capsys, tmp_path, args, message):
    code, out, err = run_cli(capsys, "train", "--out", str(tmp_path / "run"), *args)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epochs", "ten"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid int value: 'ten'" in err and err.count("\n") == 1


@pytest.mark.slow
def test_missing_data_file_without_network_is_one_line(tmp_path):
    """Run as a user does, in a subprocess, with downloads off: no traceback, exit 2."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medclassify",
            "train",
            "--dataset",
            "organcmnist",
            "--size",
            "64",
            "--no-download",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "organcmnist_64.npz is not in" in proc.stderr and "organcmnist_64.npz?download=1" in proc.stderr


def test_train_and_evaluate_from_the_command_line(capsys, blood_dir, tmp_path):
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text(f"dataset: bloodmnist\ndata_dir: {blood_dir}\nepochs: 5\nverify: false\n")
    out_dir = tmp_path / "cli-run"
    code, out, err = run_cli(
        capsys, "train", "--config", str(yaml_path), "--epochs", "2", "--out", str(out_dir), "--quiet"
    )
    assert code == 0 and "test: acc" in out and str(out_dir) in out
    assert json.loads((out_dir / "config.json").read_text())["config"]["epochs"] == 2
    saved = json.loads((out_dir / "metrics.json").read_text())
    assert f"{saved['test']['acc']:.4f}" in out

    code, out, _ = run_cli(capsys, "evaluate", str(out_dir))
    assert code == 0 and f"acc {saved['test']['acc']:.4f}" in out
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path))
    assert code == 2 and "not a medclassify run folder" in err


def test_datasets_table_marks_files_on_disk(capsys, blood_dir):
    code, out, _ = run_cli(capsys, "datasets", "--data-dir", str(blood_dir))
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert rows["bloodmnist"].split()[-2:] == ["28,64", "-"] and rows["organcmnist"].split()[-2:] == ["-", "-"]
    assert "multi-class" in rows["bloodmnist"] and "11959/1712/3421" in rows["bloodmnist"]
    assert "pneumoniamnist" in rows and "chestmnist" in rows and "organmnist3d" not in rows


def test_models_lists_parameter_counts(capsys):
    code, out, _ = run_cli(capsys, "models", "--size", "28", "--channels", "3", "--classes", "8")
    assert code == 0 and "paper-cnn" in out and "421,960" in out and "bn-cnn" in out


def test_demo_trains_offline_on_the_synthetic_sample(capsys, tmp_path):
    code, out, err = run_cli(
        capsys,
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--data-dir",
        str(tmp_path / "cache"),
        "--epochs",
        "3",
        "--quiet",
    )
    assert code == 0 and "SYNTHETIC" in err
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["test"]["acc"] > 0.6, "4 classes: chance is 0.25"
    assert (tmp_path / "cache" / "synthcells.npz").is_file()
    code, out_again, _ = run_cli(
        capsys,
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--data-dir",
        str(tmp_path / "cache"),
        "--epochs",
        "3",
        "--quiet",
    )
    assert code == 0 and out_again == out, "running the demo again finishes the saved run instead of failing"


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--batch-size" in out and "--no-verify" in out


def test_recipes_and_models_commands_list_what_train_accepts(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0 and all(
        f"{name}\n" in out for name in ("paper", "paper-bn-aug", "cnn-bn-cpu", "resnet18-fast", "resnet18-best")
    )
    assert "model=bn-cnn" in out
    code, out, _ = run_cli(capsys, "models", "--channels", "1", "--classes", "11", "--size", "64")
    assert (
        code == 0 and "1,142,795" in out and "resnet18" in out and "[--pretrained: ImageNet weights available]" in out
    )


def test_train_accepts_recipe_options_from_the_command_line(capsys, blood_dir, tmp_path):
    code, out, _ = run_cli(
        capsys,
        "train",
        "--dataset",
        "bloodmnist",
        "--data-dir",
        str(blood_dir),
        "--no-verify",
        "--quiet",
        "--recipe",
        "paper-bn-aug",
        "--epochs",
        "2",
        "--schedule",
        "step",
        "--milestones",
        "1",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert (config["model"], config["augment"], config["schedule"], config["milestones"], config["epochs"]) == (
        "paper-cnn-bn",
        "light",
        "step",
        [1],
        2,
    )
