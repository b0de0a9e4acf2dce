import json
import os
import subprocess
import sys

import pytest

from helpers import one_line_error, run_cli
from medclassify.cli import COMMANDS, build_parser, main
from medclassify.config import parse_overrides


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


def vocabulary_problems(parser) -> list[str]:
    """Where the commands of ``parser`` speak different dialects: a run not called RUN, an option
    whose help shows no default, one flag that is a switch here and one-way there, one help text for
    two different options."""
    problems = []
    kinds: dict = {}
    texts: dict = {}
    for command, sub in parser.commands.items():
        for action in sub.arguments:
            if action.dest == "help":
                continue
            shown = f"{command} {'/'.join(action.option_strings) or action.metavar}"
            if not action.option_strings:  # a positional: the run (or runs) a command works on is RUN everywhere
                names_a_run = action.dest in ("run", "runs", "model", "models") or "RUN" in str(action.metavar)
                if names_a_run and (action.metavar, action.dest) not in (("RUN", "run"), ("RUN", "runs")):
                    problems.append(f"{shown}: a run is the positional RUN")
                continue
            if not action.required and "(default:" not in (action.help or ""):
                problems.append(f"{shown}: the help shows no default")
            flag = action.option_strings[0]
            kind = (type(action).__name__, action.nargs)
            if kinds.setdefault(flag, (kind, command))[0] != kind:
                problems.append(f"{shown}: {kind[0]} here, {kinds[flag][0][0]} in {kinds[flag][1]}")
            first = texts.setdefault(action.help, (flag, command))
            if first[0] != flag:
                problems.append(f"{shown}: the same help as {first[1]} {first[0]}, another option")
    return problems


def test_every_command_speaks_one_vocabulary():
    parser = build_parser()
    assert set(parser.commands) == set(COMMANDS)
    assert vocabulary_problems(parser) == []


def test_the_vocabulary_check_sees_each_dialect():
    parser = build_parser()
    calibrate = parser.commands["calibrate"]
    calibrate.add_argument("--quiet", action="store_true", help="no output (default: off)")
    calibrate.add_argument("model", metavar="RUN_OR_MODEL", help="a run")
    calibrate.add_argument("--mystery", help="what it does")
    calibrate.add_argument("--count", type=int, help="classes listed per image (default: 3)")  # predict --top's
    assert sorted(vocabulary_problems(parser)) == [
        "calibrate --count: the same help as predict --top, another option",
        "calibrate --mystery: the help shows no default",
        "calibrate --quiet: _StoreTrueAction here, BooleanOptionalAction in demo",
        "calibrate RUN_OR_MODEL: a run is the positional RUN",
    ]


def test_run_and_tune_take_any_training_setting_checked_like_the_file(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("name: smoke\ndatasets: [bloodmnist]\nsizes: [28]\ntrain: {epochs: 10}\n")
    code, _, err = run_cli(capsys, "run", study, "--set", "epochs=0", "--out", tmp_path / "s")
    one_line_error(code, err, "epochs must be a whole number >= 1, got 0")
    code, _, err = run_cli(capsys, "run", study, "--set", "epochz=1")
    one_line_error(code, err, "--set epochz: not a training setting; known keys:")
    code, _, err = run_cli(capsys, "run", study, "--set", "epochs")
    one_line_error(code, err, "--set 'epochs': expected KEY=VALUE, e.g. epochs=1")
    code, _, err = run_cli(capsys, "run", study, "--set", "seed=3")
    one_line_error(code, err, "'train' may not set seed")
    assert not (tmp_path / "s").exists()
    from medclassify.experiments import Study

    smoke = Study.from_yaml(study, parse_overrides(["epochs=1", "track=[tensorboard]", "verify=false"]))
    assert smoke.train == {"epochs": 1, "track": ["tensorboard"], "verify": False}
