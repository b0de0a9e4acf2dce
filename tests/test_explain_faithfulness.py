"""The attribution methods and their measured faithfulness, on the quadrant task: the class is
decided by a bright square in one quadrant, so a faithful map must put its mass there, and the
model's output must fall when those pixels go."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import QUADRANT_OF_CLASS, one_line_error, quadrant_images, write_study_files
from medclassify.cli import main
from medclassify.experiments import Study
from medclassify.explain import evaluate_explanations, explain_images
from medclassify.explain.faithfulness import evaluate_method
from medclassify.explain.methods import default_layer, default_layers, layer_description
from medclassify.inference import Predictor
from medclassify.models import create_model
from medclassify.reporting.report import write_study_outputs


def quadrant_batch(per_quadrant: int = 2) -> tuple[list[np.ndarray], list[int]]:
    images, quadrants = [], []
    for name, quadrant in QUADRANT_OF_CLASS.items():
        for array in quadrant_images(name, per_quadrant, seed=20 + quadrant):
            images.append(array)
            quadrants.append(quadrant)
    return images, quadrants


def share_in_quadrant(heatmap: np.ndarray, quadrant: int) -> float:
    half = heatmap.shape[0] // 2
    row, col = divmod(quadrant, 2)
    return float(heatmap[row * half : (row + 1) * half, col * half : (col + 1) * half].sum() / heatmap.sum())


@pytest.mark.parametrize(
    "method", ["gradcam", "gradcam++", "scorecam", "layercam", "integrated-gradients", "occlusion"]
)
def test_a_faithful_method_puts_most_of_its_map_in_the_deciding_quadrant(quadrant_run, method, capsys):
    images, quadrants = quadrant_batch()
    explanations, _ = explain_images(Predictor.from_run(quadrant_run), images, method=method)
    shares = [share_in_quadrant(e.heatmaps[method], q) for e, q in zip(explanations, quadrants)]
    assert np.mean(shares) > 0.5, shares  # a map spread evenly would hold 0.25
    assert "it/s" not in capsys.readouterr().err  # no library's progress bar between the command's lines


@pytest.mark.parametrize(
    ("model", "size", "layer"),
    [("paper-cnn", 28, "features"), ("resnet18", 28, "layer3"), ("resnet18", 224, "layer4")],
)
def test_the_default_cam_layer_is_the_deepest_at_least_seven_pixels_wide(model, size, layer):
    # ResNet-18 keeps its stem at stride 1 up to 64 px: 28 px leaves layer4 4 x 4, layer3 7 x 7
    assert default_layer(create_model(model, 3, 5, size), 3, size) == layer


def test_the_layer_a_cam_read_is_named_with_its_size(quadrant_run):
    predictor = Predictor.from_run(quadrant_run)
    assert layer_description(predictor, default_layers(predictor)) == "features (7 x 7)"


@pytest.fixture(scope="module")
def evaluation(quadrant_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain-evaluation")
    return evaluate_explanations(quadrant_run, images=30, methods=["gradcam", "integrated-gradients"], out=out), out


def test_faithful_maps_delete_faster_than_a_random_map_and_pass_the_sanity_check(evaluation):
    result, out = evaluation
    assert result.images == 30
    for method in result.methods:
        # removing the pixels the map ranks first lowers the class's probability sooner than random order
        assert method.deletion_area.mean < result.random_deletion_area.mean, method.method
        assert method.insertion_area.mean > result.random_insertion_area.mean, method.method
        assert method.deletion_area.low <= method.deletion_area.mean <= method.deletion_area.high
        # ROAD: removing the most relevant pixels costs more probability than removing the least relevant
        assert method.road_combined > 0, method.method
        assert method.sanity.passed, method.sanity
        assert method.sanity.layers == ["classifier.3", "classifier.1", "features.3", "features.0"]
    # Grad-CAM's maps change once the model's weights are random: rank correlation near 0
    gradcam = next(m for m in result.methods if m.method == "gradcam")
    assert abs(gradcam.sanity.final.mean) < 0.3, gradcam.sanity
    integrated = next(m for m in result.methods if m.method == "integrated-gradients")
    assert integrated.completeness_error is not None and integrated.completeness_error.mean < 0.01
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["images"] == 30 and sorted(saved["ranking"]) == ["gradcam", "integrated-gradients"]
    assert saved["methods"][0]["layer"] == "features (7 x 7)"
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_constant_method_fails_the_sanity_check(quadrant_run):
    predictor = Predictor.from_run(quadrant_run)
    images, _ = quadrant_batch()
    batch = predictor.normalise(np.stack(images)[:, None])
    targets = [int(k) for k in predictor.logits(batch).argmax(axis=1)]

    def constant(images: np.ndarray, classes: list[int], model) -> np.ndarray:
        return np.full((len(images), 28, 28), 0.5, dtype=np.float32)

    result = evaluate_method(predictor, batch, targets, "gradcam", None, seed=0, maps_of=constant)
    assert result.sanity.final.mean == 1.0 and not result.sanity.passed


def test_the_evaluation_is_reproducible_with_the_same_seed(quadrant_run, tmp_path):
    first = evaluate_explanations(quadrant_run, images=8, methods=["occlusion"], seed=3, out=tmp_path / "a")
    second = evaluate_explanations(quadrant_run, images=8, methods=["occlusion"], seed=3, out=tmp_path / "b")
    for a, b in zip(first.methods, second.methods):
        a.seconds_per_image = b.seconds_per_image = a.evaluation_seconds = b.evaluation_seconds = 0.0
        assert a == b
    assert first.random_deletion_area == second.random_deletion_area


def test_bad_input_is_one_line(quadrant_run, exported_run, tmp_path, capsys):
    code = main(["explain", str(quadrant_run), "--evaluate", "--images", "0", "--out", str(tmp_path / "e")])
    one_line_error(code, capsys.readouterr().err, "--images must be a whole number >= 1, got 0")
    with pytest.raises(SystemExit) as exit_:
        main(["explain", str(quadrant_run), "x.png", "--method", "saliency"])
    assert exit_.value.code == 2 and "invalid choice: 'saliency'" in capsys.readouterr().err
    code = main(["explain", str(exported_run / "model.onnx"), "x.png", "--method", "integrated-gradients"])
    assert code == 2 and "not torch" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_the_runs_model_card_says_which_explanations_can_be_trusted(quadrant_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(quadrant_run, run)
    result = evaluate_explanations(run, images=10, methods=["gradcam", "occlusion"])
    card = (run / "MODEL_CARD.md").read_text()
    assert "## Which explanations can be trusted" in card and str(run / "MODEL_CARD.md") in result.files
    for method in result.methods:
        verdict = "passes" if method.sanity.passed else "fails"
        row = f"| {method.method} | {method.deletion_area.mean:.3f} ("
        assert row in card and f"{method.sanity.final.mean:.2f}, {verdict} |" in card
    # the table follows the ranking written beside it
    ranking = json.loads((run / "explain" / "evaluation.json").read_text())["ranking"]
    assert card.index(f"| {ranking[0]} |") < card.index(f"| {ranking[1]} |")


def test_predict_draws_the_heatmaps_of_the_chosen_method(quadrant_run, exported_run, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(quadrant_images("top-left", 1)[0]).save(tmp_path / "scan.png")
    out = tmp_path / "cams"
    code = main(
        ["predict", str(quadrant_run), str(tmp_path / "scan.png"), "--explain", "layercam", "--explain-dir", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 0 and "top-left" in captured.out and f"wrote {out / 'scan_layercam.png'}" in captured.err
    assert (out / "scan_layercam.png").read_bytes()[:4] == b"\x89PNG"
    # an exported file has no gradients: refused before anything is predicted or written
    code = main(["predict", str(exported_run / "model.onnx"), str(tmp_path / "scan.png"), "--explain", "gradcam"])
    captured = capsys.readouterr()
    one_line_error(code, captured.err, "not torch")
    assert "top-left" not in captured.out
    code = main(["predict", str(quadrant_run), str(tmp_path / "scan.png"), "--explain-dir", str(tmp_path / "x")])
    one_line_error(code, capsys.readouterr().err, "--explain-dir is where --explain writes")


def _estimate(mean: float, half_width: float = 0.05) -> dict:
    return {"mean": mean, "low": mean - half_width, "high": mean + half_width}


def test_a_study_measures_each_experiments_first_seed_and_its_report_says_which_explanations_to_trust(tmp_path):
    data = write_study_files(tmp_path / "data", ["bloodmnist", "pneumoniamnist"], sizes=(28,))
    study_yaml = tmp_path / "study.yaml"
    study_yaml.write_text(
        "name: maps\ndatasets: [bloodmnist, pneumoniamnist]\nsizes: [28]\nseeds: [0, 1]\ntrain: {epochs: 1}\n"
        "explain: {methods: [gradcam], images: 100}\n"
    )
    out = tmp_path / "study"
    args = ["run", str(study_yaml), "--out", str(out), "--data-dir", str(data), "--no-verify", "--bootstrap", "20"]
    assert main([*args, "--quiet"]) == 0
    runs = out / "runs"
    blood = runs / "bloodmnist_28_paper-cnn_seed0" / "explain" / "evaluation.json"
    measured = json.loads(blood.read_text())
    # 100 images asked, the test split holds 40: all of them; the second seed is not measured
    assert measured["images"] == 40 and [m["method"] for m in measured["methods"]] == ["gradcam"]
    assert (runs / "pneumoniamnist_28_paper-cnn_seed0" / "explain" / "evaluation.json").is_file()
    assert not (runs / "bloodmnist_28_paper-cnn_seed1" / "explain").exists()
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "### Which explanations can be trusted" in report
    gradcam = next(m for m in measured["methods"] if m["method"] == "gradcam")
    deletion = gradcam["deletion_area"]
    cell = f"{deletion['mean']:.4f}<br>({deletion['low']:.4f}–{deletion['high']:.4f})"
    assert f"| BloodMNIST · 28 px · paper-cnn, seed 0 | gradcam | {cell} |" in report

    # measured once: running the study again keeps the record
    written = blood.stat().st_mtime_ns
    assert main([*args, "--quiet"]) == 0
    assert blood.stat().st_mtime_ns == written

    # the sentences follow the numbers: a hand-made record where both methods beat the random map on
    # deletion, only eigencam on insertion, and eigencam fails the sanity check
    methods = []
    for name, deletion, insertion, passed in (("eigencam", 0.2, 0.8, False), ("gradcam", 0.3, 0.62, True)):
        method = {**gradcam, "method": name, "deletion_area": _estimate(deletion)}
        method["insertion_area"] = _estimate(insertion)
        method["sanity"] = {**gradcam["sanity"], "passed": passed, "final": _estimate(0.9 if not passed else -0.1)}
        methods.append(method)
    record = {**measured, "methods": methods, "ranking": ["eigencam", "gradcam"]}
    record["random_deletion_area"] = record["random_insertion_area"] = _estimate(0.6)
    blood.write_text(json.dumps(record))
    (runs / "pneumoniamnist_28_paper-cnn_seed0" / "explain" / "evaluation.json").unlink()
    study = Study.from_yaml(study_yaml)
    write_study_outputs(study, out, n_boot=20)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert (
        "BloodMNIST · 28 px · paper-cnn: deletion separates eigencam, gradcam from the random map (intervals "
        "apart); insertion separates eigencam; eigencam fails the sanity check (its maps stay alike when the "
        "weights are random); the most trustworthy is gradcam (" in report
    )
    assert 'Explanations not measured for: PneumoniaMNIST · 28 px · paper-cnn (add "explain: {}"' in report
    assert "| BloodMNIST · 28 px · paper-cnn, seed 0 | random map | 0.6000<br>(0.5500–0.6500) |" in report
    assert report.index("| eigencam |") < report.index("| gradcam |")
    write_study_outputs(study, out, n_boot=20, lang="zh")
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "### 哪些解释可以信任" in report and "eigencam 未通过合理性检验" in report
    assert "最可信的是 gradcam" in report and "以下实验未测量解释：PneumoniaMNIST · 28 px · paper-cnn" in report
