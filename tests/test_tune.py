"""Hyper-parameter search: trials are run folders chosen on validation, the search resumes without
repeating trials (an interrupted one is tried again), and the best recipe file trains."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from helpers import write_medmnist_npz
from medclassify.cli import main
from medclassify.errors import ConfigError
from medclassify.runs import RunDir

optuna = pytest.importorskip("optuna")


def _search(tmp_path, trials: int, **extra) -> tuple:
    data = tmp_path / "data"
    write_medmnist_npz(data / "bloodmnist.npz", counts=(96, 32, 40))
    search = {
        "name": "fx",
        "base": {"dataset": "bloodmnist", "epochs": 2, "verify": False},
        "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "batch_size": {"choices": [16, 32]}},
        "metric": "val_acc",
        "trials": trials,
        **extra,
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(search))
    return path, data


def _trials(tune_dir):
    with open(tune_dir / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_search_resumes_without_repeating_trials_and_its_best_recipe_trains(tmp_path, capsys):
    path, data = _search(tmp_path, trials=2, pruner="none")
    out = tmp_path / "tune"
    args = ["tune", str(path), "--out", str(out), "--data-dir", str(data), "--quiet"]
    assert main([*args, "--no-retrain"]) == 0
    first = _trials(out)
    assert [t["number"] for t in first] == ["0", "1"] and all(t["state"] == "complete" for t in first)
    stamps = {t["run_dir"]: (tmp_path / t["run_dir"] / "metrics.json").stat().st_mtime_ns for t in first}
    for t in first:  # a trial's value is its best validation figure, from its own history
        history = json.loads((tmp_path / t["run_dir"] / "metrics.json").read_text())
        rows = RunDir(tmp_path / t["run_dir"]).history()
        assert float(t["val_acc"]) == pytest.approx(max(float(r["val_acc"]) for r in rows), abs=1e-6)
        assert history["select_metric"] == "acc"

    # a killed search leaves a trial running: it is failed and its parameters are tried again
    study = optuna.load_study(study_name="fx", storage=f"sqlite:///{out / 'optuna.db'}")
    cut = study.ask(
        {
            "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
            "batch_size": optuna.distributions.CategoricalDistribution([16, 32]),
        }
    )
    path.write_text(path.read_text().replace("trials: 2", "trials: 3"))
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    trials = _trials(out)
    states = {t["number"]: t["state"] for t in trials}
    assert states == {"0": "complete", "1": "complete", "2": "fail", "3": "complete"}
    assert float(trials[3]["lr"]) == pytest.approx(cut.params["lr"])  # the interrupted trial, again
    assert all((tmp_path / d / "metrics.json").stat().st_mtime_ns == m for d, m in stamps.items())  # not repeated

    best = yaml.safe_load((out / "best.yaml").read_text())
    values = [float(t["val_acc"]) for t in trials if t["state"] == "complete"]
    chosen = next(t for t in trials if t["state"] == "complete" and float(t["val_acc"]) == max(values))
    assert best["lr"] == pytest.approx(float(chosen["lr"])) and "dataset" not in best
    test = json.loads((out / f"best_trial_{int(chosen['number']):03d}" / "metrics.json").read_text())["test"]
    report = (out / "report.md").read_text()
    assert f"ACC {test['acc']:.4f}" in report and "the search never read" in report
    assert f"test ACC {test['acc']:.4f}" in printed
    assert (out / "optimization_history.png").stat().st_size > 5000
    # the best recipe file is a recipe like any other
    again = tmp_path / "again"
    assert (
        main(
            [
                "train",
                "--dataset",
                "bloodmnist",
                "--data-dir",
                str(data),
                "--no-verify",
                "--recipe",
                str(out / "best.yaml"),
                "--out",
                str(again),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((again / "config.json").read_text())["config"]["lr"] == pytest.approx(best["lr"])


def test_bad_searches_are_refused_with_one_line(tmp_path, capsys):
    path, data = _search(tmp_path, trials=2)
    original = yaml.safe_load(path.read_text())
    for change, message in (
        ({"space": {"out": {"choices": ["x"]}}}, "space: out cannot be searched"),
        ({"space": {"lr": {"low": 0.1, "high": 0.01}}}, "low' < 'high"),
        ({"metric": "test_acc"}, "metric"),
        ({"trials": None}, "give a budget"),
    ):
        values = {**original, **change}
        path.write_text(yaml.safe_dump(values))
        assert main(["tune", str(path), "--out", str(tmp_path / "t")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    binary = tmp_path / "image.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    assert main(["tune", str(binary)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the search YAML" in err
    with pytest.raises(ConfigError, match="no such recipe file"):
        from medclassify.config import load_recipe

        load_recipe(str(tmp_path / "missing.yaml"))


@pytest.mark.slow
def test_a_search_runs_on_ray_tune_and_resumes_without_repeating_trials(tmp_path):
    pytest.importorskip("ray.tune")
    path, data = _search(tmp_path, trials=2, pruner="median")
    out = tmp_path / "tune"
    args = [
        "tune",
        str(path),
        "--out",
        str(out),
        "--data-dir",
        str(data),
        "--quiet",
        "--no-retrain",
        "--backend",
        "ray",
    ]
    assert main([*args, "--workers", "2"]) == 0
    first = _trials(out)
    assert sorted(t["number"] for t in first) == ["0", "1"] and {t["state"] for t in first} <= {"complete", "pruned"}
    for t in first:  # every trial is a run folder; a complete one's value is its best validation figure
        rows = RunDir(tmp_path / t["run_dir"]).history()
        if t["state"] == "complete":
            assert float(t["val_acc"]) == pytest.approx(max(float(r["val_acc"]) for r in rows), abs=1e-6)
    assert (out / "ray").is_dir() and (out / "best.yaml").is_file()  # Ray Tune's experiment folder, the recipe
    stamps = {t["run_dir"]: (tmp_path / t["run_dir"] / "history.csv").stat().st_mtime_ns for t in first}

    path.write_text(path.read_text().replace("trials: 2", "trials: 3"))
    assert main(args) == 0
    again = _trials(out)
    assert sorted(t["number"] for t in again) == ["0", "1", "2"]
    assert {d: (tmp_path / d / "history.csv").stat().st_mtime_ns for d in stamps} == stamps  # not run again
