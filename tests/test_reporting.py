import base64
import csv
import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

import medclassify
from helpers import plain_cells, write_medmnist_npz, write_study_files
from medclassify.citation import software_citation
from medclassify.cli import main
from medclassify.evaluation.stats import Side, mcnemar
from medclassify.experiments import Study, load_experiments, run_study
from medclassify.reporting.discussion import compare, overfitting
from medclassify.reporting.published import published_results, report_rows
from medclassify.reporting.report import write_study_outputs
from medclassify.runtime.environment import cpu_model


def probabilities(rng, n, k):
    raw = rng.random((n, k))
    return raw / raw.sum(1, keepdims=True)


@pytest.mark.parametrize("task, k", [("multi-class", 5), ("binary-class", 2), ("multi-label, binary-class", 4)])
def test_bootstrap_fast_path_equals_the_sklearn_metrics(task, k):
    rng = np.random.default_rng(0)
    n = 120
    y = (rng.random((n, k)) < 0.4).astype(int) if task.startswith("multi-label") else np.arange(n) % k
    scores = [rng.random((n, k)) if task.startswith("multi-label") else probabilities(rng, n, k) for _ in range(2)]
    side = Side(y, scores, task)
    for _ in range(5):
        index = rng.integers(0, n, n)
        fast = side.resampled(index)
        for name in ("acc", "f1_macro", "auc"):
            assert fast[name] == pytest.approx(side.metric(name, index), abs=1e-12)


def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs():
    y = np.zeros(20, dtype=int)
    right, wrong = np.array([0.9, 0.1]), np.array([0.1, 0.9])
    # a right on images 0..9, b right on 0..5 and 10..16: a alone right on 6..9 (4), b alone on 10..16 (7)
    a = Side(y, [np.array([right if i < 10 else wrong for i in range(20)])], "binary-class")
    b = Side(y, [np.array([right if i < 6 or 10 <= i < 17 else wrong for i in range(20)])], "binary-class")
    result = mcnemar(a, b)
    # two-sided exact p: 2 * P(X <= 4 | n = 11, 1/2) = 2 * (1 + 11 + 55 + 165 + 330) / 2048
    assert (result["only_a_correct"], result["only_b_correct"]) == (4, 7)
    assert result["p_value"] == pytest.approx(2 * 562 / 2048)


def write_size_fixture(data, learnable_size):
    """pneumoniamnist at 28 and 64 px where only ``learnable_size`` carries the class pattern."""
    for size in (28, 64):
        name = "pneumoniamnist.npz" if size == 28 else f"pneumoniamnist_{size}.npz"
        write_medmnist_npz(data / name, size=size, channels=1, n_classes=2, counts=(160, 40, 200), seed=size)
        if size != learnable_size:  # same labels, images of pure noise: nothing to learn
            with np.load(data / name) as archive:
                arrays = dict(archive)
            rng = np.random.default_rng(1)
            for split in ("train", "val", "test"):
                arrays[f"{split}_images"] = rng.integers(0, 255, arrays[f"{split}_images"].shape, dtype=np.uint8)
            np.savez(data / name, **arrays)


@pytest.mark.slow
@pytest.mark.parametrize("winner, loser", [(64, 28), (28, 64)])
def test_report_conclusion_follows_the_size_that_wins(tmp_path, winner, loser):
    data = tmp_path / "data"
    write_size_fixture(data, learnable_size=winner)
    study = Study.from_dict(
        {"name": "sizes", "datasets": ["pneumoniamnist"], "sizes": [28, 64], "train": {"epochs": 3, "verify": False}}
    )
    run_study(study, tmp_path / "s", data_dir=str(data), quiet=True)
    (comparison,) = compare(load_experiments(study, tmp_path / "s"), n_boot=200)
    assert comparison.factor == "size" and comparison.paired
    assert comparison.verdict == ("better" if winner == 64 else "worse")
    outputs = write_study_outputs(study, tmp_path / "s", n_boot=200)
    report = outputs["report"].read_text()
    if winner == 64:
        assert "PneumoniaMNIST, paper-cnn: 64 px beats 28 px." in report
    else:
        assert "PneumoniaMNIST, paper-cnn: 64 px is worse than 28 px." in report
    assert "do not differ significantly" not in report
    # every metric whose difference interval excludes 0 is named, with its direction
    named = re.search(r"The 95% interval of the difference excludes 0 for ([^.]+)\.", report).group(1).split("; ")
    direction = "higher" if winner == 64 else "lower"
    for metric, key in (("accuracy", "acc"), ("macro-F1", "f1_macro"), ("macro-AUC", "auc")):
        d = comparison.difference[key]
        excludes = d["ci_low"] > 0 or d["ci_high"] < 0
        assert (f"{metric} ({direction} for 64 px)" in named) == excludes
    assert f"accuracy ({direction} for 64 px)" in named


@pytest.mark.slow
def test_tiny_study_writes_every_figure_and_a_self_contained_report(tmp_path, capsys):
    data = write_study_files(tmp_path / "data", ["bloodmnist", "pneumoniamnist"])
    study_yaml = tmp_path / "tiny.yaml"
    study_yaml.write_text("name: tiny\ndatasets: [bloodmnist, pneumoniamnist]\nsizes: [28, 64]\ntrain: {epochs: 1}\n")
    out = tmp_path / "study"
    for lang in ("en", "zh"):
        code = main(
            [
                "run",
                str(study_yaml),
                "--out",
                str(out),
                "--data-dir",
                str(data),
                "--no-verify",
                "--bootstrap",
                "30",
                "--quiet",
                "--lang",
                lang,
            ]
        )
        assert code == 0
        html = (out / "report.html").read_text(encoding="utf-8")
        if lang == "en":
            english = html
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["experiment"] for r in rows] == [
        f"{d}_{s}_paper-cnn" for d in ("bloodmnist", "pneumoniamnist") for s in (28, 64)
    ]
    for row in rows:
        metrics = json.loads((out / "runs" / f"{row['experiment']}_seed0" / "metrics.json").read_text())
        for name in ("acc", "f1_macro", "auc"):
            assert float(row[f"test_{name}"]) == pytest.approx(metrics["test"][name], rel=1e-5)
            assert (
                float(row[f"test_{name}_ci_low"]) - 1e-9
                <= float(row[f"test_{name}"])
                <= float(row[f"test_{name}_ci_high"]) + 1e-9
            )
    markdown = (out / "results.md").read_text()
    assert sum(line.startswith("| ") for line in markdown.splitlines()) == 1 + 4 and "macro-AUC (95% CI)" in markdown

    figures = out / "figures"
    expected = [
        "loss_curves",
        "bloodmnist_roc",
        "pneumoniamnist_roc",
        "test_metrics",
        "reliability",
    ] + [f"confusion_{d}_{s}_paper-cnn" for d in ("bloodmnist", "pneumoniamnist") for s in (28, 64)]
    for name in expected:
        with Image.open(figures / f"{name}.png") as image:
            image.verify()
        assert Image.open(figures / f"{name}.png").info.get("dpi", (0,))[0] == pytest.approx(150, abs=1)
        assert ET.parse(figures / f"{name}.svg").getroot().tag.endswith("svg")
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', english)
    assert len(embedded) == len(expected) and all(base64.b64decode(e)[:8] == b"\x89PNG\r\n\x1a\n" for e in embedded)
    report = (out / "report.md").read_text(encoding="utf-8")
    visible = re.sub(r"<[^>]+>|data:image/png;base64,[^\"]+", " ", english)  # the words a reader sees
    # a cell's estimate and its interval are separate unbreakable lines: no range is ever split
    lines = re.findall(r'<span class="line">([^<]*)</span>', english)
    intervals = [line for line in lines if line.startswith("(")]
    assert len(intervals) > 20 and all(
        re.fullmatch(r"\([+-]?\d+\.\d{4}(–| to )[+-]?\d+\.\d{4}\)", line) for line in intervals
    )
    # one name per experiment, in tables, sentences and captions alike; run folder names stay out of it
    assert "BloodMNIST · 28 px · paper-cnn" in visible and "bloodmnist_28_paper-cnn" not in visible
    assert cpu_model() in visible, "the CPU model is named"
    assert "at the start" in visible and "at the end" in visible, "the load average around the runs"
    assert visible.index("Appendix: every training setting") > visible.index("Limitations")
    assert "基于卷积神经网络的医学图像分类研究——以 MedMNIST 数据集为例" in visible
    assert visible.rstrip().endswith(software_citation(medclassify.__version__))
    english = plain_cells(english)
    assert not re.search(r"\b(None|nan|NaN|True|False)\b", visible + report), "no Python value in a report"
    assert "讨论" in report and "实验环境" in report and "表 2" in report, "the last run wrote the Chinese report"
    for section in (
        "Experimental environment",
        "Datasets",
        "Model architectures",
        "Training settings",
        "Table 2",
        "Discussion",
        "Which dataset is harder?",
        "Does image size matter?",
        "Over-fitting check",
        "Limitations",
    ):
        assert section in english
    assert "McNemar" in english and "421,960" in english
    # the published MedMNIST v2 and MedMNIST+ rows stand beside the measured ones at each size, labelled,
    # at the size their networks saw, in both languages
    assert (
        "<td>BloodMNIST · Google AutoML Vision — published, not measured here</td><td>28</td><td>0.966</td><td>–</td><td>0.998</td>"
        in english
    )
    assert "<td>PneumoniaMNIST · ResNet-50 — published, not measured here</td><td>224</td>" in english
    assert "<td>BloodMNIST · VGG16, end-to-end — published, not measured here</td><td>64</td><td>0.982</td>" in english
    assert "Scientific Data 10:41" in english and "Scientific Reports 15:7669" in english
    assert "<td>BloodMNIST</td>" in english and "<td>PneumoniaMNIST</td>" in english, "names as the papers write them"
    assert "zero-padded to 224 px" in english and "the 28 px images enlarged to 224 px" in english
    shown = sum(len(report_rows(d, s)) for d in ("bloodmnist", "pneumoniamnist") for s in (28, 64))
    assert english.count("published, not measured here</td>") == shown >= 2 * 7 + 2
    assert "BloodMNIST · auto-sklearn — 已发表结果，非本研究测得 | 28 | 0.878 | – | 0.984 |" in report


def test_published_tables_ship_with_their_sources_in_fractions():
    import medmnist

    v2_methods = {("ResNet-18", 28), ("ResNet-18", 224), ("ResNet-50", 28), ("ResNet-50", 224)}
    v2_methods |= {(m, 28) for m in ("auto-sklearn", "AutoKeras", "Google AutoML Vision")}
    for flag in (f for f in medmnist.INFO if "3d" not in f):
        v2 = published_results(flag, 28, ("v2",))
        assert {(r.model, r.trained_size) for r in v2} == v2_methods, flag  # the current page only, once each
        plus = published_results(flag, sources=("plus",))
        assert len(plus) == 10 * 3 * 4, flag  # 10 models x 3 schemes x 4 sizes
        assert all(0.0 < r.acc <= 1 and (r.auc is None or 0.4 < r.auc <= 1) for r in v2 + plus), flag
        assert all(r.where_read.startswith("github.com/") for r in v2 + plus)
        assert published_results(flag, 64, ("v2",)) == [], "MedMNIST v2 trained on the 28 px images only"
    # cells checked by hand against the transcribed tables (v2 in fractions, MedMNIST+ in percent)
    blood = {(r.model, r.trained_size): (r.acc, r.auc) for r in published_results("bloodmnist", 28, ("v2",))}
    assert blood[("Google AutoML Vision", 28)] == (0.966, 0.998) and blood[("ResNet-18", 28)] == (0.958, 0.998)
    assert blood[("auto-sklearn", 28)] == (0.878, 0.984), "the current page, not the superseded 0.877"
    organ = {(r.model, r.trained_size): r.acc for r in published_results("organamnist", 28, ("v2",))}
    assert organ[("ResNet-18", 28)] == 0.935
    plus = {(r.model, r.training, r.size): r for r in published_results("bloodmnist", sources=("plus",))}
    assert (plus[("VGG16", "end-to-end", 64)].acc, plus[("VGG16", "end-to-end", 28)].acc) == (0.982, 0.9485)
    assert plus[("VGG16", "end-to-end", 28)].trained_size == 224, "MedMNIST+ pads 28 px images to 224"
    assert all(r.auc is None for r in plus.values() if r.training.startswith("kNN"))
    best = report_rows("bloodmnist", 64)
    assert [r.source for r in best].count("v2") == 0 and best[0].acc == max(
        r.acc for r in plus.values() if r.size == 64 and r.training == "end-to-end"
    )


def test_published_prints_the_table_a_user_compares_with(capsys):
    from medclassify.cli import main

    assert main(["published", "BloodMNIST", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("BloodMNIST: published test results, not measured here")
    assert "plus        64       64  VGG16                     end-to-end        0.9820 0.9991" in out
    assert "Scientific Reports 15:7669" in out and "v2 " not in out
    assert main(["published", "nosuchmnist"]) == 2
    assert "nosuchmnist: not a MedMNIST 2D dataset" in capsys.readouterr().err


def test_overfitting_rule_reads_the_loss_curves():
    class Fake:
        histories = [
            [
                {"train_loss": str(t), "val_loss": str(v)}
                for t, v in zip([1.0, 0.6, 0.4, 0.2, 0.1], [0.9, 0.5, 0.45, 0.55, 0.6])
            ]
        ]

    verdict = overfitting(Fake())
    assert verdict["overfits"] and verdict["best_epoch"] == 3 and verdict["rise"] == pytest.approx(0.6 / 0.45 - 1)
    # val barely rises (+5 %) but ends at 2.5x the still-falling training loss: over-fitting too
    Fake.histories = [
        [{"train_loss": str(t), "val_loss": str(v)} for t, v in zip([1.0, 0.5, 0.3, 0.2], [0.9, 0.5, 0.48, 0.504])]
    ]
    assert overfitting(Fake())["overfits"] and overfitting(Fake())["gap"] == pytest.approx(2.52)
    Fake.histories = [[{"train_loss": str(t), "val_loss": str(v)} for t, v in zip([1.0, 0.6, 0.4], [0.9, 0.5, 0.42])]]
    assert not overfitting(Fake())["overfits"], "validation loss still at its minimum at the end"
    Fake.histories = [[{"train_loss": str(t), "val_loss": str(v)} for t, v in zip([1.0, 0.6, 0.5], [0.9, 0.5, 0.52])]]
    assert not overfitting(Fake())["overfits"], "+4 % and close to the training loss"


def test_reproduce_lists_every_missing_file_before_training(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    write_medmnist_npz(tmp_path / "bloodmnist.npz")
    code = main(["reproduce", "--data-dir", str(tmp_path), "--out", str(tmp_path / "paper")])
    err = capsys.readouterr().err
    assert code == 2 and "3 data file(s) missing, nothing was trained" in err and err.count("\n") == 1
    for name in ("bloodmnist_64.npz", "organcmnist.npz", "organcmnist_64.npz"):
        assert f"{name} from https://" in err
    assert "bloodmnist.npz from" not in err and not (tmp_path / "paper").exists()


def test_reproduce_runs_the_papers_four_experiments_with_its_recipe(tmp_path):
    """The packaged study is the paper's: four experiments, its CNN, cross-entropy, Adam at 1e-3, 10
    epochs, batch 32. (tests/test_tutorials.py runs ``medclassify reproduce`` end to end, shortened.)"""
    from medclassify.cli.study import PACKAGED_STUDIES

    study = Study.from_yaml(PACKAGED_STUDIES / "paper.yaml")
    configs = study.configs(tmp_path)
    assert [(c.dataset, c.size) for c in configs] == [
        ("bloodmnist", 28),
        ("bloodmnist", 64),
        ("organcmnist", 28),
        ("organcmnist", 64),
    ]
    for config in configs:
        assert (config.model, config.loss, config.optimizer, config.lr) == ("paper-cnn", "ce", "adam", 0.001)
        assert (config.epochs, config.batch_size, config.augment, config.schedule) == (10, 32, "none", "none")


@pytest.mark.slow
def test_parallel_workers_give_the_numbers_of_a_sequential_run(tmp_path):
    data = write_study_files(tmp_path / "data", ["pneumoniamnist"], counts=(64, 16, 32))
    # one thread each way: PyTorch's CPU kernels may add up in another order with another thread count
    study = Study.from_dict(
        {
            "name": "w",
            "datasets": ["pneumoniamnist"],
            "sizes": [28, 64],
            "train": {"epochs": 2, "verify": False, "num_threads": 1},
        }
    )
    run_study(study, tmp_path / "seq", data_dir=str(data), quiet=True)
    run_study(study, tmp_path / "par", data_dir=str(data), quiet=True, workers=2)
    for run in ("pneumoniamnist_28_paper-cnn_seed0", "pneumoniamnist_64_paper-cnn_seed0"):
        seq = (tmp_path / "seq" / "runs" / run / "predictions.csv").read_text()
        par = (tmp_path / "par" / "runs" / run / "predictions.csv").read_text()
        assert seq == par


def test_two_seeds_that_disagree_widen_the_interval_and_the_comparison():
    """With seeds at 0.60 and 0.80 accuracy, the interval must hold both, and a third experiment
    at 0.70 must not be called different: the spread between runs is part of the uncertainty."""
    from medclassify.evaluation.stats import bootstrap_difference, bootstrap_interval, mcnemar_per_seed

    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 2, n)

    def scores(accuracy):
        right = rng.random(n) < accuracy
        positive = np.where(right == (y == 1), 0.9, 0.1)
        return np.stack([1 - positive, positive], axis=1)

    a = Side(y, [scores(0.60), scores(0.80)], "binary-class")
    low, high = bootstrap_interval(a, n_boot=400)["acc"]
    seed_values = [float(np.mean((s[:, 1] > 0.5) == y)) for s in a.scores]
    assert low <= min(seed_values) and max(seed_values) <= high
    b = Side(y, [scores(0.70), scores(0.70)], "binary-class")
    difference = bootstrap_difference(a, b, paired=True, n_boot=400)["acc"]
    assert difference["ci_low"] < 0 < difference["ci_high"]
    tests = mcnemar_per_seed(a, b, [0, 1], [0, 1])
    assert [(t["seed_a"], t["seed_b"]) for t in tests] == [
        (0, 0),
        (1, 1),
    ]  # one test per seed pair, not one on averages


@pytest.mark.slow
def test_report_states_each_experiments_own_settings_and_does_not_attribute_them_to_the_model(tmp_path, capsys):
    data = write_study_files(tmp_path / "data", ["bloodmnist"], sizes=(28,), counts=(48, 16, 32))
    study_yaml = tmp_path / "s.yaml"
    study_yaml.write_text(
        "name: settings\ndatasets: [bloodmnist]\nsizes: [28]\nmodels: [paper-cnn, bn-cnn]\n"
        "train: {epochs: 2}\nexperiments:\n  - match: {model: bn-cnn}\n"
        "    train: {optimizer: sgd, lr: 0.01, augment: light, loss: focal, focal_gamma: 1.5}\n"
    )
    out = tmp_path / "study"
    reports = {}
    for lang in ("en", "zh"):
        assert (
            main(
                [
                    "run",
                    str(study_yaml),
                    "--out",
                    str(out),
                    "--data-dir",
                    str(data),
                    "--no-verify",
                    "--bootstrap",
                    "30",
                    "--quiet",
                    "--lang",
                    lang,
                ]
            )
            == 0
        )
        reports[lang] = (out / "report.md").read_text(encoding="utf-8")
    en = reports["en"]
    differing = en.split("Training settings that differ between experiments")[1].split("## ")[0]
    header = next(line for line in differing.splitlines() if line.startswith("| experiment"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in differing.splitlines()
        if line.startswith("| BloodMNIST")
    }
    for run in (out / "runs").iterdir():  # every cell of the table is what the run's config.json says
        config = json.loads((run / "config.json").read_text())["config"]
        row = dict(zip(columns, rows[f"BloodMNIST · 28 px · {config['model']}"]))
        assert row["optimiser"] == config["optimizer"] and row["augmentation"] == config["augment"]
        assert row["learning rate"] == str(config["lr"]) and row["loss"] == (
            "focal" if config["loss"] == "focal" else "cross-entropy"
        )
        assert row["focal γ"] == (str(config["focal_gamma"]) if config["loss"] == "focal" else "–")
        assert row["SGD momentum"] == (str(config["momentum"]) if config["optimizer"] == "sgd" else "–")
    shared = en.split("Training settings shared by every experiment")[1].split("Table")[0]
    assert "| epochs | 2 |" in shared and "| optimiser |" not in shared and "| augmentation |" not in shared
    assert "without augmentation" not in en and "no hyper-parameter was tuned" not in en
    model_verdict = en.split("Which model is better?")[1].split("###")[0]
    assert "so the difference cannot be attributed to the model alone" in model_verdict
    assert "optimiser, learning rate" in model_verdict and "augmentation" in model_verdict
    assert "too few to judge over-fitting" in en  # 2 epochs
    assert "Acevedo et al." in en and "Scientific Data 10, 41 (2023)" in en
    assert [int(n) for n in re.findall(r"^Table (\d+)\.", en, flags=re.M)] == list(range(1, 11))  # 10: the appendix
    assert "BloodMNIST: AUC of each class against the rest" in en
    zh = reports["zh"]
    assert "不能仅归因于模型" in zh and "训练轮数" in zh and "不足以依据损失曲线判断过拟合" in zh
    assert "Training settings" not in zh and "cannot be attributed" not in zh


def test_calibration_figures_come_from_the_predictions_like_their_intervals():
    """The results row's calibration figures are those of each seed's saved predictions (so runs
    recorded before these figures existed report them), averaged over seeds."""
    from medclassify.evaluation.metrics import calibration_metrics
    from medclassify.experiments.results import Experiment, results_rows

    rng = np.random.default_rng(4)
    y = np.arange(90) % 3
    scores = [probabilities(rng, 90, 3) for _ in range(2)]
    old_record = {"test": {"acc": 0.5, "auc": 0.5, "f1_macro": 0.5}, "best_epoch": 2}  # no calibration keys
    records = [
        {"config": {"seed": seed}, "data": {"task": "multi-class", "class_names": ["a", "b", "c"]}} for seed in (0, 1)
    ]
    e = Experiment(
        "bloodmnist",
        28,
        "paper-cnn",
        [],
        [old_record, old_record],
        records,
        [[{"seconds": "1", "images_per_s": "1"}]] * 2,
        Side(y, scores, "multi-class"),
    )
    (row,) = results_rows([e], n_boot=20)
    expected = [calibration_metrics(y, s, "multi-class")["ece_debiased"] for s in scores]
    assert row["test_ece_debiased"] == pytest.approx(np.mean(expected)) and row[
        "test_ece_debiased_std"
    ] == pytest.approx(np.std(expected, ddof=1))


def test_per_class_auc_with_its_interval_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    from medclassify.experiments.results import Experiment, results_rows

    rng = np.random.default_rng(5)
    y = np.arange(120) % 4
    scores = [probabilities(rng, 120, 4) for _ in range(2)]
    for s in scores:
        s[np.arange(120), y] += 0.5
        s /= s.sum(1, keepdims=True)
    record = {"test": {"acc": 0.5, "auc": 0.5, "f1_macro": 0.5}, "best_epoch": 1}
    names = ["a", "b", "c", "d"]
    e = Experiment(
        "bloodmnist",
        28,
        "paper-cnn",
        [],
        [record, record],
        [{"config": {"seed": 0}, "data": {"task": "multi-class", "class_names": names}}] * 2,
        [[{"seconds": "1", "images_per_s": "1"}]] * 2,
        Side(y, scores, "multi-class"),
    )
    (row,) = results_rows([e], n_boot=50)
    for i, name in enumerate(names):
        expected = np.mean([roc_auc_score(y == i, s[:, i]) for s in scores])
        assert row[f"test_auc_{name}"] == pytest.approx(expected, abs=1e-12)
        assert row[f"test_auc_{name}_ci_low"] <= row[f"test_auc_{name}_ci_high"]


def test_the_report_states_the_weight_average_and_the_mixing_a_run_used():
    from medclassify.reporting.settings import NOT_USED, run_settings

    base = {"config": {"lr": 0.001, "epochs": 10, "batch_size": 32}, "data": {"task": "multi-class"}}
    plain = run_settings(base)
    assert (plain["ema_decay"], plain["mix"], plain["mix_alpha"]) == ("off", "none", NOT_USED)
    tuned = run_settings({**base, "config": {**base["config"], "ema_decay": 0.998, "mix": "cutmix", "mix_alpha": 0.4}})
    assert (tuned["ema_decay"], tuned["mix"], tuned["mix_alpha"]) == ("0.998", "cutmix", "0.4")


def test_a_conformal_study_reports_coverage_and_set_size_per_experiment(tmp_path, capsys):
    data = write_study_files(tmp_path / "data", ["bloodmnist"])
    study_yaml = tmp_path / "sets.yaml"
    study_yaml.write_text(
        "name: sets\ndatasets: [bloodmnist]\nsizes: [28]\nseeds: [0, 1]\ntrain: {epochs: 1, conformal: 0.2}\n"
    )
    out = tmp_path / "study"
    args = ["run", str(study_yaml), "--out", str(out), "--data-dir", str(data), "--no-verify", "--bootstrap", "20"]
    assert main([*args, "--quiet"]) == 0
    tests = [
        json.loads((out / "runs" / f"bloodmnist_28_paper-cnn_seed{s}" / "metrics.json").read_text())["conformal"][
            "test"
        ]
        for s in (0, 1)
    ]
    html = plain_cells((out / "report.html").read_text(encoding="utf-8"))
    assert "Conformal prediction sets on the test split" in html
    mean = np.mean([t["coverage"] for t in tests])
    sd = np.std([t["coverage"] for t in tests], ddof=1)
    size = np.mean([t["mean_size"] for t in tests])
    assert f"{mean:.4f} ± {sd:.4f}" in html and f"<td>{size:.2f}</td>" in html and "<td>80%</td>" in html


@pytest.mark.slow
def test_a_test_split_unlike_validation_is_said_and_its_threshold_shown_on_both(tmp_path):
    """Test images from another population (a third of their labels disagree with the pattern the
    model learns): the report says validation and test differ and that the validation-chosen
    threshold does not carry over, and its operating-point table puts validation and test
    sensitivity and specificity side by side."""
    write_medmnist_npz(tmp_path / "data" / "pneumoniamnist.npz", channels=1, n_classes=2, counts=(96, 48, 96), seed=3)
    with np.load(tmp_path / "data" / "pneumoniamnist.npz") as stored:
        arrays = dict(stored)
    test_labels = arrays["test_labels"][:, 0]
    flipped = test_labels.copy()
    flipped[: len(flipped) // 3] = 1 - flipped[: len(flipped) // 3]
    arrays["test_labels"] = flipped[:, None].astype(np.uint8)
    np.savez_compressed(tmp_path / "data" / "pneumoniamnist.npz", **arrays)
    study_yaml = tmp_path / "s.yaml"
    study_yaml.write_text(
        "name: shift\ndatasets: [pneumoniamnist]\nsizes: [28]\nseeds: [0, 1]\n"
        "train: {epochs: 4, verify: false, threshold: youden}\n"
    )
    out = tmp_path / "study"
    args = ["run", str(study_yaml), "--out", str(out), "--data-dir", str(tmp_path / "data"), "--bootstrap", "30"]
    assert main([*args, "--quiet"]) == 0
    html = plain_cells((out / "report.html").read_text(encoding="utf-8"))
    metrics = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/metrics.json"))]
    val = sum(round(m["val"]["acc"] * m["val"]["n"]) for m in metrics) / sum(m["val"]["n"] for m in metrics)
    test = sum(round(m["test"]["acc"] * m["test"]["n"]) for m in metrics) / sum(m["test"]["n"] for m in metrics)
    assert val > 0.9 and test < 0.8, "the fixture is what this test says it is"
    assert f"validation accuracy {val:.4f}" in html and f"test accuracy {test:.4f}" in html
    assert "The intervals do not overlap: the test images differ from the validation images" in html
    assert "The accuracy at the validation-chosen threshold does not carry over either" in html
    assert "<th>validation sensitivity</th><th>test sensitivity</th>" in html
    points = [m["operating_point"] for m in metrics]
    tp = sum(p["test"]["tp"] for p in points)
    assert f"<td>{tp / (tp + sum(p['test']['fn'] for p in points)):.4f} (" in html


def test_citation_file_matches_the_package():
    """CITATION.cff, the citation a report ends with, and the package agree on title, author,
    version and licence; the paper the CNN comes from is named by its title."""
    from pathlib import Path

    import yaml

    from medclassify.citation import PAPER_TITLE, SOFTWARE_AUTHOR, SOFTWARE_TITLE

    root = Path(__file__).parents[1]
    cff = yaml.safe_load((root / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["title"] == SOFTWARE_TITLE and cff["authors"] == [{"name": SOFTWARE_AUTHOR}]
    assert cff["version"] == medclassify.__version__ and cff["license"] == "MIT"
    assert PAPER_TITLE in cff["abstract"]
    from medclassify.models import available_models

    assert PAPER_TITLE in available_models()["paper-cnn"].description


def test_study_figures_read_as_a_reviewer_needs(tmp_path, monkeypatch):
    """What a reader sees in the figures: whole-epoch ticks; every ROC curve from (0, 0); one metric
    chart of dots with interval whiskers on an axis zoomed to the intervals (ensembles included);
    legends of at least 8 pt; under each reliability panel the images per bin, sparse bins hatched."""
    from medclassify.evaluation.metrics import classification_metrics
    from medclassify.experiments.results import Experiment, ensemble_rows, results_rows
    from medclassify.reporting import figures as study_figures_module

    shown = {}

    def keep(figure, path, formats=("png", "svg")):
        shown[path.name] = figure
        return [path.with_suffix(".png")]

    monkeypatch.setattr(study_figures_module, "save_figure", keep)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    experiments = []
    for model, skill in (("paper-cnn", 2.0), ("bn-cnn", 2.4)):
        scores = []
        for _ in range(2):
            logits = rng.normal(0, 1, (300, 3)) + skill * np.eye(3)[y]
            scores.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
        history = [
            {"epoch": str(i), "train_loss": str(1 / i), "val_loss": str(1.1 / i), "seconds": "1", "images_per_s": "1"}
            for i in (1, 2, 3)
        ]
        experiments.append(
            Experiment(
                "bloodmnist",
                28,
                model,
                [],
                [{"test": {**classification_metrics(y, s, "multi-class"), "n": 300}, "best_epoch": 3} for s in scores],
                [
                    {"config": {"seed": k}, "data": {"task": "multi-class", "class_names": ["a", "b", "c"]}}
                    for k in range(2)
                ],
                [history, history],
                Side(y, scores, "multi-class"),
            )
        )
    rows = results_rows(experiments, n_boot=50)
    rows += ensemble_rows(experiments, rows, n_boot=50)
    study_figures_module.study_figures(experiments, rows, tmp_path)
    assert set(shown) >= {"loss_curves", "bloodmnist_roc", "test_metrics", "reliability"}
    assert "all_experiments" not in shown and "bloodmnist_comparison" not in shown, "one metric chart"

    for ax in shown["loss_curves"].axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    for ax in (a for a in shown["bloodmnist_roc"].axes if a.get_visible()):
        curves = [line for line in ax.get_lines() if line.get_linestyle() != ":"]
        assert curves and all(line.get_xdata()[0] == 0 and line.get_ydata()[0] == 0 for line in curves)

    chart = shown["test_metrics"]
    labels = [t.get_text() for t in chart.axes[0].get_yticklabels()]
    assert labels == [
        "BloodMNIST · 28 px · paper-cnn",
        "BloodMNIST · 28 px · bn-cnn",
        "BloodMNIST · 28 px · paper-cnn · ensemble of 2 seeds",
        "BloodMNIST · 28 px · bn-cnn · ensemble of 2 seeds",
    ], "the tables' names, ensembles included"
    for ax, metric in zip(chart.axes, ("acc", "f1_macro", "auc")):
        low, high = ax.get_xlim()
        assert low > 0 and low <= min(r[f"test_{metric}_ci_low"] for r in rows)
        assert high >= max(r[f"test_{metric}_ci_high"] for r in rows)
        assert not ax.patches, "dots, not bars"
        values = sorted(float(t.get_text()) for t in ax.texts)
        assert values == sorted(round(r[f"test_{metric}"], 3) for r in rows)
        assert all(t.get_rotation() == 0 and t.get_fontsize() >= 8 for t in ax.texts)

    for figure in shown.values():
        for ax in figure.axes:
            legend = ax.get_legend()
            assert legend is None or all(t.get_fontsize() >= 8 for t in legend.get_texts())

    reliability = shown["reliability"].axes
    first, counts = reliability[0], reliability[1]
    scores = experiments[0].side.scores[0]
    confidence = scores.max(1)
    expected = np.bincount(np.clip((confidence * 15).astype(int), 0, 14), minlength=15)
    assert [round(p.get_height()) for p in counts.patches] == expected.tolist()
    hatched = [p for p in first.patches if p.get_hatch()]
    assert len(hatched) == int(np.sum((expected > 0) & (expected < 10)))


def test_a_setting_the_compared_variant_switches_off_is_not_called_another_difference():
    """Focal loss against cross-entropy: focal gamma and label smoothing are each used by one side
    only, a consequence of the loss, so the comparison is not called confounded by them; a setting
    both sides use with different values still is, and so is unfreezing after 3 epochs against never."""
    from types import SimpleNamespace

    from medclassify.reporting.settings import differing_settings

    def experiment(**config):
        base = {"lr": 0.001, "epochs": 10, "batch_size": 32, "label_smoothing": 0.0, "focal_gamma": 2.0}
        record = {"config": {**base, **config}, "data": {"task": "multi-class", "orientation": "free"}}
        return SimpleNamespace(records=[record])

    plain, focal = experiment(), experiment(loss="focal")
    assert differing_settings(plain, focal) == ["loss"]
    assert differing_settings(plain, experiment(loss="focal", batch_size=64)) == ["batch_size", "loss"]
    frozen = experiment(freeze_backbone=True)
    assert differing_settings(frozen, experiment(freeze_backbone=True, unfreeze_after=3)) == ["unfreeze_after"]
