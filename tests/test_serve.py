"""The HTTP API with FastAPI's TestClient, on the quadrant model of conftest: every route, the
error cases, concurrency, metrics and logs."""

from __future__ import annotations

import base64
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from helpers import QUADRANT_CLASSES, png_bytes, quadrant_images
from medclassify.io import file_md5
from medclassify.serve import ServeSettings, create_app, load_served_models


def upload(name: str, data: bytes, content_type: str = "image/png") -> tuple:
    return ("files", (name, data, content_type))


@pytest.fixture(scope="module")
def served(quadrant_run, exported_run):
    return load_served_models([f"quadrants={quadrant_run}", f"onnx={exported_run / 'model.onnx'}"])


@pytest.fixture
def client(served):
    with TestClient(create_app(served)) as client:
        yield client


def test_health_and_models(client, quadrant_run):
    assert client.get("/health").json() == {"status": "ok", "models": 2}
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"quadrants", "onnx"}
    first = models["quadrants"]
    assert first["classes"] == QUADRANT_CLASSES and first["image_size"] == 28 and first["channels"] == 1
    assert first["task"] == "multi-class" and first["architecture"] == "paper-cnn" and first["explain"] is True
    assert first["version"] == file_md5(quadrant_run / "best.pt")[:12] == models["onnx"]["version"]
    assert first["test_metrics"]["acc"] >= 0.95 and first["backend"] == "pytorch"
    assert models["onnx"]["backend"] == "onnxruntime" and models["onnx"]["explain"] is False


def test_predict_a_batch_of_formats(client):
    files = [
        upload("grey.png", png_bytes(quadrant_images("top-left", 1)[0])),
        upload(
            "photo.jpg", png_bytes(quadrant_images("bottom-right", 1, size=60, channels=3)[0], "JPEG"), "image/jpeg"
        ),
        upload("scan.tiff", png_bytes(quadrant_images("top-right", 1)[0], "TIFF"), "image/tiff"),
        upload("scan.bmp", png_bytes(quadrant_images("bottom-left", 1)[0], "BMP"), "image/bmp"),
    ]
    for model in ("quadrants", "onnx"):
        answer = client.post(f"/v1/predict?model={model}&top=2", files=files)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == model and len(body["version"]) == 12
        got = [(p["file"], p["prediction"]) for p in body["predictions"]]
        assert got == [
            ("grey.png", "top-left"),
            ("photo.jpg", "bottom-right"),
            ("scan.tiff", "top-right"),
            ("scan.bmp", "bottom-left"),
        ]
        first = body["predictions"][0]
        assert len(first["top"]) == 2 and first["top"][0] == {"class": "top-left", "probability": first["probability"]}
        assert sum(first["probabilities"].values()) == pytest.approx(1.0) and first["heatmap"] is None


def test_predict_dicom_by_content(client, tmp_path):
    from test_inference import quadrant_dicom

    data = quadrant_dicom(tmp_path / "ct.dcm", "bottom-right").read_bytes()
    answer = client.post("/v1/predict", files=[upload("no-extension", data, "application/octet-stream")])
    assert answer.status_code == 200 and answer.json()["predictions"][0]["prediction"] == "bottom-right"


def test_explain_returns_a_png_overlay(client):
    answer = client.post(
        "/v1/predict?explain=true", files=[upload("x.png", png_bytes(quadrant_images("top-right", 1, size=40)[0]))]
    )
    heatmap = answer.json()["predictions"][0]["heatmap"]
    assert heatmap.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(heatmap.split(",", 1)[1]))) as image:
        assert image.format == "PNG" and image.size == (240, 240)  # 40 px enlarged 6x to reach 224


def test_explain_draws_the_chosen_method_and_refuses_an_unknown_one(client):
    image = png_bytes(quadrant_images("top-right", 1, size=40)[0])
    grad_cam, occlusion = (
        client.post(f"/v1/predict?explain=true&method={m}", files=[upload("x.png", image)]).json()["predictions"][0][
            "heatmap"
        ]
        for m in ("gradcam", "occlusion")
    )
    assert occlusion.startswith("data:image/png;base64,") and occlusion != grad_cam
    answer = client.post("/v1/predict?explain=true&method=saliency", files=[upload("x.png", image)])
    assert answer.status_code == 422 and "gradcam" in answer.text


def test_client_file_names_never_become_paths(client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    answer = client.post(
        "/v1/predict", files=[upload("../../etc/evil.png", png_bytes(quadrant_images("top-left", 1)[0]))]
    )
    assert answer.json()["predictions"][0]["file"] == "evil.png"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "query, files, status, message",
    [
        (
            "",
            [upload("a.png", b"GIF89a" + bytes(100))],
            415,
            "a.png: not a PNG, JPEG, TIFF, BMP or DICOM file (judged by its content)",
        ),
        ("", [upload("a.png", b"\x89PNG\r\n\x1a\n" + bytes(50))], 400, "a.png: not a readable image"),
        (
            "",
            [upload("a.jpg", png_bytes(quadrant_images("top-left", 1)[0], "JPEG")[:60], "image/jpeg")],
            400,
            "a.jpg: not a readable image",
        ),
        (
            "?model=nosuch",
            [upload("a.png", png_bytes(quadrant_images("top-left", 1)[0]))],
            404,
            "unknown model 'nosuch'; loaded: quadrants, onnx",
        ),
        (
            "?model=onnx&explain=true",
            [upload("a.png", png_bytes(quadrant_images("top-left", 1)[0]))],
            400,
            "model 'onnx' is an exported file without PyTorch weights",
        ),
    ],
)
def test_bad_requests_get_a_json_error(client, query, files, status, message):
    answer = client.post(f"/v1/predict{query}", files=files)
    assert answer.status_code == status and message in answer.json()["detail"]


def test_limits(served):
    settings = ServeSettings(max_upload_mb=0.01, max_pixels=30 * 30, max_files=2)
    with TestClient(create_app(served, settings)) as client:
        big = png_bytes(np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8))  # ~19 kB of noise
        answer = client.post("/v1/predict", files=[upload("big.png", big)])
        assert (
            answer.status_code == 413 and answer.json()["detail"] == "big.png: larger than the upload limit of 0.01 MB"
        )
        wide = png_bytes(np.zeros((31, 40), dtype=np.uint8))
        answer = client.post("/v1/predict", files=[upload("wide.png", wide)])
        assert answer.status_code == 413 and "40 x 31 pixels exceed the limit of 900 pixels" in answer.json()["detail"]
        small = png_bytes(quadrant_images("top-left", 1)[0])
        answer = client.post("/v1/predict", files=[upload(f"{i}.png", small) for i in range(3)])
        assert (
            answer.status_code == 413 and answer.json()["detail"] == "more than 2 files in one request; the limit is 2"
        )
        answer = client.post("/v1/predict", files=[upload("huge.png", bytes(3 << 20))])  # over the whole-request limit
        assert answer.status_code == 413 and answer.json()["detail"].startswith(
            "the request is larger than its limit of 1.02 MB"
        )
        missing = client.post("/v1/predict")  # no file at all
        assert missing.status_code == 422 and missing.json() == {"detail": "body.files: Field required"}
        bad_top = client.post("/v1/predict?top=0", files=[upload("a.png", small)])
        assert (
            bad_top.status_code == 422
            and bad_top.json()["detail"] == "query.top: Input should be greater than or equal to 1"
        )


def test_twenty_parallel_requests_are_all_answered_correctly(client):
    names = ["top-left", "top-right", "bottom-left", "bottom-right", "none"]
    jobs = [(names[i % 5], png_bytes(quadrant_images(names[i % 5], 1, seed=100 + i)[0])) for i in range(20)]

    def ask(job):
        name, data = job
        answer = client.post("/v1/predict?model=quadrants", files=[upload(f"{name}.png", data)])
        return name, answer.status_code, answer.json()["predictions"][0]["prediction"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(ask, job) for job in jobs]
        assert client.get("/health").status_code == 200  # answered while predictions run
        results = [f.result() for f in futures]
    assert all(status == 200 for _, status, _ in results)
    assert [predicted for _, _, predicted in results] == [name for name, _, _ in results]


def test_metrics_and_one_log_line_per_request(client, caplog):
    caplog.set_level(logging.INFO, logger="medclassify.serve")
    client.post("/v1/predict?model=quadrants", files=[upload("a.png", png_bytes(quadrant_images("top-left", 1)[0]))])
    client.post("/v1/predict", files=[upload("a.png", b"nonsense")])
    text = client.get("/metrics").text
    assert 'medclassify_requests_total{method="POST",route="/v1/predict",status="200"} 1.0' in text
    assert 'medclassify_requests_total{method="POST",route="/v1/predict",status="415"} 1.0' in text
    assert 'medclassify_predictions_total{label="top-left",model="quadrants"} 1.0' in text
    assert 'medclassify_request_seconds_bucket{le="+Inf",route="/v1/predict"} 2.0' in text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "medclassify.serve"]
    assert [(line["route"], line["status"], line["model"]) for line in lines[:2]] == [
        ("/v1/predict", 200, "quadrants"),
        ("/v1/predict", 415, "quadrants"),
    ]
    assert all(line["latency_ms"] >= 0 for line in lines)


def test_web_page_and_its_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "not a diagnosis" in page.text and 'id="files"' in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
    assert client.get("/static/../serve/app.py").status_code == 404
