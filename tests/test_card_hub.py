"""Model cards (Hugging Face's format, read back with huggingface_hub), the Hub folder export that
Predictor loads, and the upload (against a stand-in for the Hub: this machine cannot reach it)."""

from __future__ import annotations

import json
import shutil
import socket
import sys

import numpy as np
import pytest

from medclassify.cli import main

ModelCard = pytest.importorskip("huggingface_hub").ModelCard


@pytest.fixture
def run(blood_run, tmp_path):
    target = tmp_path / "blood28"
    shutil.copytree(blood_run.run_dir, target)
    return target


def test_every_run_gets_a_model_card_that_the_hub_library_reads(run, capsys):
    from medclassify.defaults import CARD_RESAMPLES
    from medclassify.evaluation.stats import Side, bootstrap_interval
    from medclassify.runs import RunDir

    assert (run / "MODEL_CARD.md").is_file()  # written by train
    assert main(["card", str(run)]) == 0
    assert "MODEL_CARD.md" in capsys.readouterr().out
    card = ModelCard.load(run / "MODEL_CARD.md")
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert card.data.library_name == "medclassify" and card.data.license == "cc-by-4.0"
    assert card.data.pipeline_tag == "image-classification" and card.data.datasets == ["bloodmnist"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {
        "accuracy": round(metrics["acc"], 4),
        "f1": round(metrics["f1_macro"], 4),
        "roc_auc": round(metrics["auc"], 4),
    }
    y_true, scores = RunDir(run).test_scores(False)
    low, high = bootstrap_interval(Side(y_true, [scores], "multi-class"), CARD_RESAMPLES)["acc"]
    assert f"| accuracy | {metrics['acc']:.4f} | {low:.4f}–{high:.4f} |" in card.text
    assert "This model is not a medical device" in card.text and "## Limitations" in card.text
    assert "## Calibration" not in card.text  # not calibrated: nothing claimed


def test_the_card_states_calibration_sets_and_a_non_commercial_licence_when_they_apply(run):
    from medclassify.runs import model_card

    assert main(["calibrate", str(run), "--conformal", "0.2"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    text = (run / "MODEL_CARD.md").read_text()  # calibrate rewrote it
    assert f"T = {metrics['calibrated']['temperature']:.4g}" in text
    assert f"test coverage {metrics['conformal']['test']['coverage']:.4f}" in text
    record = json.loads((run / "config.json").read_text())
    record["data"]["name"] = record["config"]["dataset"] = "dermamnist"  # the licence: from its metadata
    (run / "config.json").write_text(json.dumps(record))
    derma = model_card(run)
    assert ModelCard(derma).data.license == "cc-by-nc-4.0"
    assert "non-commercial use only" in derma


def test_the_hub_folder_loads_back_and_predicts_the_runs_probabilities(run, capsys):
    from medclassify.inference import Predictor

    assert main(["calibrate", str(run), "--conformal", "0.2"]) == 0
    assert main(["export", str(run), "--format", "hub"]) == 0
    assert "largest logit difference to PyTorch 0.00e+00" in capsys.readouterr().out
    hub = run / "hub"
    assert sorted(p.name for p in hub.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    preprocessor = json.loads((hub / "preprocessor_config.json").read_text())
    bundle_prep = json.loads((hub / "config.json").read_text())["preprocessing"]
    assert preprocessor["image_mean"] == bundle_prep["mean"] and preprocessor["size"] == {"height": 28, "width": 28}
    ModelCard.load(hub / "README.md")
    pixels = np.random.default_rng(0).integers(0, 256, (16, 3, 28, 28), dtype=np.uint8)
    from_run, from_hub = Predictor.from_run(run, backend="torch"), Predictor.from_run(hub)
    assert np.array_equal(from_run.predict_pixels(pixels), from_hub.predict_pixels(pixels))
    assert from_hub.temperature == from_run.temperature != 1.0 and from_hub.conformal == from_run.conformal
    assert main(["export", str(hub)]) == 2
    assert "a Hub folder; export from the run folder it came from" in capsys.readouterr().err


def test_push_uploads_the_hub_folder(run, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeHub:
        def __init__(self, endpoint=None, token=None):
            calls.append(("token", token))

        def whoami(self):
            calls.append(("whoami",))

        def create_repo(self, repo_id, **options):
            calls.append(("create", repo_id, options))

        def upload_folder(self, folder_path, repo_id, **options):
            calls.append(("upload", repo_id, sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())))
            return type("Commit", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    endpoint = socket.create_server(("127.0.0.1", 0))  # a Hub endpoint that accepts connections
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{endpoint.getsockname()[1]}")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    with endpoint:
        assert main(["push", str(run), "--repo", "alice/blood-cnn", "--private"]) == 0
    assert calls == [
        ("token", "hf_test"),
        ("whoami",),
        ("create", "alice/blood-cnn", {"repo_type": "model", "private": True, "exist_ok": True}),
        ("upload", "alice/blood-cnn", ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]),
    ]
    assert "https://hub.example/alice/blood-cnn/commit/1" in capsys.readouterr().out
    assert main(["push", str(run), "--repo", "blood-cnn"]) == 2
    assert "--repo blood-cnn: expected OWNER/NAME" in capsys.readouterr().err


def test_without_the_hub_extra_each_option_says_what_to_install(run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert main(["export", str(run), "--format", "hub"]) == 2
    assert "pip install 'medclassify[hub]'" in capsys.readouterr().err
    assert main(["push", str(run), "--repo", "alice/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "push needs huggingface_hub: pip install 'medclassify[hub]'" in err
