import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from helpers import write_study_files
from medclassify.errors import ConfigError
from medclassify.evaluation.stats import Side, bootstrap_interval
from medclassify.experiments import Study, load_experiments, results_rows, run_study
from medclassify.experiments.results import ensemble_rows
from medclassify.reporting.tables import write_results_table
from medclassify.training import trainer


@pytest.fixture
def two_datasets(tmp_path):
    return write_study_files(tmp_path / "data", ["bloodmnist", "pneumoniamnist"])


def tiny_study(**extra):
    values = {
        "name": "tiny",
        "datasets": ["bloodmnist", "pneumoniamnist"],
        "sizes": [28, 64],
        "models": ["paper-cnn"],
        "seeds": [0],
        "train": {"epochs": 1, "verify": False},
    }
    return Study.from_dict({**values, **extra})


def test_study_expands_the_grid_with_per_experiment_settings(tmp_path):
    study = tiny_study(seeds=2, experiments=[{"match": {"size": 64}, "train": {"batch_size": 8}}])
    configs = study.configs(tmp_path)
    assert len(configs) == 2 * 2 * 1 * 2
    assert configs[0].run_dir() == tmp_path / "runs" / "bloodmnist_28_paper-cnn_seed0"
    assert {c.batch_size for c in configs if c.size == 64} == {8} and {
        c.batch_size for c in configs if c.size == 28
    } == {32}
    assert all(c.epochs == 1 and c.quiet for c in configs)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"sizes": [30]}, "size 30 is not available for bloodmnist"),
        ({"train": {"seed": 3}}, "'train' may not set seed"),
        ({"train": {"epoch": 3}}, "unknown key\\(s\\) epoch"),
        ({"colour": "red"}, "unknown key\\(s\\) colour"),
        (
            {"experiments": [{"match": {"lr": 1}, "train": {}}]},
            "match may use dataset, size, model, variant, seed, not lr",
        ),
        ({"seeds": 0}, "seeds: a count from 1 to 1000 or a list of seeds, got 0"),
        ({"explain": {"methods": ["saliency"]}}, "explain.methods.0: Input should be 'gradcam', 'gradcam\\+\\+'"),
        ({"explain": {"images": 0}}, "explain.images: Input should be greater than or equal to 1, got 0"),
    ],
)
def test_bad_studies_are_rejected_before_training(values, message):
    with pytest.raises(ConfigError, match=message):
        tiny_study(**values)


def test_interrupted_study_finishes_without_redoing_completed_experiments(two_datasets, tmp_path, monkeypatch):
    study = tiny_study(datasets=["pneumoniamnist"])
    real_train = trainer.train
    trained = []

    def interrupt_second(config):
        if len(trained) == 1:
            raise KeyboardInterrupt
        trained.append(config.run_dir().name)
        return real_train(config)

    monkeypatch.setattr("medclassify.experiments.runner.train", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, tmp_path / "s", data_dir=str(two_datasets), quiet=True)
    first_metrics = (tmp_path / "s" / "runs" / trained[0] / "metrics.json").read_bytes()

    monkeypatch.setattr(
        "medclassify.experiments.runner.train", lambda c: trained.append(c.run_dir().name) or real_train(c)
    )
    statuses = run_study(study, tmp_path / "s", data_dir=str(two_datasets), quiet=True)
    assert trained == ["pneumoniamnist_28_paper-cnn_seed0", "pneumoniamnist_64_paper-cnn_seed0"]
    assert [s.state for s in statuses] == ["done", "trained"]
    assert (tmp_path / "s" / "runs" / trained[0] / "metrics.json").read_bytes() == first_metrics


def test_several_seeds_give_mean_and_standard_deviation(two_datasets, tmp_path):
    study = tiny_study(datasets=["pneumoniamnist"], sizes=[28], seeds=2)
    run_study(study, tmp_path / "s", data_dir=str(two_datasets), quiet=True)
    (row,) = results_rows(load_experiments(study, tmp_path / "s"), n_boot=20)
    aucs = [
        json.loads((tmp_path / "s" / "runs" / f"pneumoniamnist_28_paper-cnn_seed{s}" / "metrics.json").read_text())[
            "test"
        ]["auc"]
        for s in (0, 1)
    ]
    assert row["seeds"] == "0 1"
    assert row["test_auc"] == pytest.approx(np.mean(aucs)) and row["test_auc_std"] == pytest.approx(
        np.std(aucs, ddof=1)
    )
    write_results_table([row], tmp_path / "s")
    assert " ± " in (tmp_path / "s" / "results.md").read_text()

    # the seed ensemble: the mean of the seeds' test probabilities, scored as one model
    experiments = load_experiments(study, tmp_path / "s")
    (ensemble,) = ensemble_rows(experiments, [row], n_boot=20)
    mean = np.mean(experiments[0].side.scores, axis=0)
    truth = experiments[0].side.y_true
    assert ensemble["experiment"] == "pneumoniamnist_28_paper-cnn_ensemble" and ensemble["ensemble"]
    assert ensemble["test_auc"] == pytest.approx(roc_auc_score(truth, mean[:, 1]))
    assert ensemble["test_acc"] == pytest.approx(accuracy_score(truth, mean.argmax(1)))
    assert ensemble["test_acc_std"] == 0.0 and ensemble["test_acc_ci_low"] <= ensemble["test_acc"]
    assert list(ensemble) == list(row)  # one results.csv, one set of columns
    write_results_table([row, ensemble], tmp_path / "s")
    table = (tmp_path / "s" / "results.md").read_text()
    assert "| 0 1 (ensemble) |" in table and "Rows marked (ensemble)" in table


def test_bootstrap_interval_covers_the_metric_and_narrows_with_more_data():
    rng = np.random.default_rng(0)

    def interval(n):
        y = np.arange(n) % 2
        p1 = np.clip(0.5 + (y - 0.5) * 0.3 + rng.normal(0, 0.25, n), 0, 1)
        scores = np.stack([1 - p1, p1], 1)
        low, high = bootstrap_interval(Side(y, [scores], "binary-class"), n_boot=200)["auc"]
        return low, roc_auc_score(y, p1), high

    low, auc, high = interval(100)
    assert low < auc < high
    low_big, _, high_big = interval(2000)
    assert high_big - low_big < (high - low) / 2
