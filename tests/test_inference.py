"""Prediction on new image files and ONNX/TorchScript export, on a model trained for the test (the
quadrant task of conftest.quadrant_run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

from helpers import QUADRANT_CLASSES as CLASSES
from helpers import quadrant_images
from medclassify.cli import main
from medclassify.data.images import dicom_voi, model_input, read_image_file
from medclassify.inference import Predictor, export_model


def write_quadrant_files(folder: Path) -> dict[str, str]:
    """One file per format; returns {file name: expected class}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    grey = quadrant_images("top-left", 1)[0]
    Image.fromarray(grey).save(folder / "grey.png")
    expected["grey.png"] = "top-left"
    colour = quadrant_images("bottom-right", 1, size=56, channels=3)[0]
    Image.fromarray(colour).save(folder / "colour_56px.png")
    expected["colour_56px.png"] = "bottom-right"
    Image.fromarray(quadrant_images("top-right", 1, size=40, channels=3)[0]).save(folder / "photo.jpg", quality=95)
    expected["photo.jpg"] = "top-right"
    Image.fromarray(quadrant_images("bottom-left", 1)[0]).save(folder / "scan.bmp")
    expected["scan.bmp"] = "bottom-left"
    wide = quadrant_images("top-right", 1)[0].astype(np.uint16) * 200  # a 16-bit TIFF
    Image.fromarray(wide).save(folder / "wide.tif")
    expected["wide.tif"] = "top-right"
    return expected


def quadrant_dicom(path: Path, class_name: str, monochrome1: bool = False) -> Path:
    """pydicom's real CT file with its pixels replaced by a quadrant image in Hounsfield units (air
    around a 400 HU square, stored with the file's intercept of -1024) and a soft-tissue window."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = quadrant_images(class_name, 1, size=ds.Rows)[0].astype(np.float64) / 255.0 * 1400.0 - 1000.0
    if monochrome1:  # stored bright-means-low, as MONOCHROME1 displays
        hu = -hu
        ds.PhotometricInterpretation = "MONOCHROME1"
    stored = np.rint(hu - float(ds.RescaleIntercept)).astype(np.int16)
    ds.PixelData = stored.tobytes()
    ds.WindowCenter, ds.WindowWidth = (-400 if not monochrome1 else 400), 1200
    ds.save_as(path)
    return path


def test_predict_png_jpeg_bmp_tiff_grey_and_colour(quadrant_run, tmp_path):
    expected = write_quadrant_files(tmp_path / "images")
    predictions = Predictor.from_run(quadrant_run).predict(tmp_path / "images")
    assert sorted(Path(s).name for s in predictions.sources) == sorted(expected)
    for i, source in enumerate(predictions.sources):
        assert predictions.predicted(i) == expected[Path(source).name], source
    assert predictions.class_names == CLASSES
    np.testing.assert_allclose(predictions.probabilities.sum(axis=1), 1.0, atol=1e-9)


def test_predict_dicom_applies_rescale_window_and_monochrome1(quadrant_run, tmp_path):
    files = [
        quadrant_dicom(tmp_path / "ct.dcm", "bottom-right"),
        quadrant_dicom(tmp_path / "inverted.dcm", "top-left", monochrome1=True),
    ]
    predictions = Predictor.from_run(quadrant_run).predict(files)
    assert [predictions.predicted(i) for i in range(2)] == ["bottom-right", "top-left"]


def test_dicom_window_matches_pydicom(tmp_path):
    """Our 0-255 window equals pydicom's windowing rescaled from its output range."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = [40, 300], [400, 1500]  # two windows: the first one applies
    path = tmp_path / "window.dcm"
    ds.save_as(path)
    ours = read_image_file(path)[0].pixels[:, :, 0]
    hu = apply_modality_lut(ds.pixel_array, ds)
    reference = apply_windowing(hu, ds)
    low, high = -(2**15) * 1.0 + float(ds.RescaleIntercept), (2**15 - 1) * 1.0 + float(ds.RescaleIntercept)
    expected = np.rint((reference - low) / (high - low) * 255.0)
    assert np.abs(ours.astype(int) - expected).max() <= 1
    assert ours.min() == 0 and ours.max() == 255  # CT_small spans more than a 400 HU window
    ds.WindowCenter, ds.WindowWidth = 40, 400  # hand-computed: below, at and above the window
    assert np.array_equal(dicom_voi(np.array([-200.0, 40.0, 1000.0]), ds, "x"), [0, 128, 255])


def test_dicom_voi_lut_sequence_and_sigmoid_follow_pydicom(tmp_path):
    """A VOI LUT Sequence wins over a window; a SIGMOID window is not a linear one."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds)
    first, entries = int(hu.min()), 4096
    lut = Dataset()
    lut.add_new("LUTDescriptor", "SS", [entries, first, 12])  # first mapped value: signed, as the HU are
    lut.add_new("LUTData", "US", [int(v) for v in np.sqrt(np.linspace(0, 1, entries)) * 4095])  # a gamma curve, 12-bit
    ds.VOILUTSequence = Sequence([lut])
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.save_as(tmp_path / "lut.dcm")
    ours = read_image_file(tmp_path / "lut.dcm")[0].pixels[:, :, 0]
    expected = np.rint(apply_voi_lut(np.rint(hu).astype(int), ds, prefer_lut=True) / 4095 * 255)
    np.testing.assert_array_equal(ours, expected)

    del ds.VOILUTSequence
    ds.VOILUTFunction = "SIGMOID"
    ds.save_as(tmp_path / "sigmoid.dcm")
    sigmoid = read_image_file(tmp_path / "sigmoid.dcm")[0].pixels[:, :, 0].astype(int)
    # y = 1 / (1 + exp(-4 (x - c) / w)) of the 0-255 range (PS3.3 C.11.2.1.3.1)
    np.testing.assert_allclose(sigmoid, 255 / (1 + np.exp(-4 * (hu - 40) / 400)), atol=1)


def test_dicom_without_window_uses_its_range_and_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    plain = read_image_file(get_testdata_file("CT_small.dcm"))[0].pixels[:, :, 0]
    hu = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(plain, np.rint((hu - hu.min()) / (hu.max() - hu.min()) * 255).astype(np.uint8))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    np.testing.assert_array_equal(read_image_file(tmp_path / "m1.dcm")[0].pixels[:, :, 0], 255 - plain)


def test_predict_npy_and_npz_stacks(quadrant_run, tmp_path):
    stack = np.concatenate([quadrant_images("top-right", 2), quadrant_images("bottom-left", 2)])
    np.savez(tmp_path / "stack.npz", images=stack)
    np.save(tmp_path / "one.npy", quadrant_images("bottom-right", 1)[0].astype(np.float32) / 255.0)  # floats in [0, 1]
    np.savez(tmp_path / "medmnist_layout.npz", train_images=stack, test_images=stack[::-1])
    predictions = Predictor.from_run(quadrant_run).predict(
        [tmp_path / "stack.npz", tmp_path / "one.npy", tmp_path / "medmnist_layout.npz"]
    )
    assert predictions.sources[:2] == [f"{tmp_path / 'stack.npz'}[0]", f"{tmp_path / 'stack.npz'}[1]"]
    got = [predictions.predicted(i) for i in range(len(predictions))]
    assert got == ["top-right"] * 2 + ["bottom-left"] * 2 + ["bottom-right"] + ["bottom-left"] * 2 + ["top-right"] * 2


def test_predict_accepts_arrays_and_pil_images_from_python(quadrant_run):
    predictor = Predictor.from_run(quadrant_run / "best.pt")
    grey = quadrant_images("top-left", 1)[0]
    predictions = predictor.predict([grey, Image.fromarray(quadrant_images("bottom-right", 1, channels=3)[0])])
    assert [predictions.predicted(i) for i in range(2)] == ["top-left", "bottom-right"]
    assert predictions.top(0, 2)[0][0] == "top-left" and len(predictions.top(0, 2)) == 2
    record = predictions.records()[0]
    assert (
        set(record) == {"file", "prediction", "probability", "top", "probabilities", "decision", "prediction_set"}
        and len(record["top"]) == 3
    )
    assert record["decision"] is None  # no operating point in this bundle


def test_conversion_follows_training_folders(quadrant_run, tmp_path):
    """A colour image goes through luma to the grey model, exactly as a colour training file would."""
    rgb = np.random.default_rng(0).integers(0, 256, (33, 45, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    pixels = model_input(read_image_file(tmp_path / "x.png"), 28, 1)
    expected = np.asarray(Image.fromarray(rgb).resize((28, 28), Image.Resampling.BICUBIC).convert("L"))
    assert pixels.shape == (1, 1, 28, 28)
    assert np.abs(pixels[0, 0].astype(int) - expected).max() <= 1


def test_cli_skips_a_corrupt_file_and_writes_csv_and_json(quadrant_run, tmp_path, capsys):
    expected = write_quadrant_files(tmp_path / "images")
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main(["predict", str(quadrant_run), str(tmp_path / "images"), "--out", str(tmp_path / "p.csv"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0
    assert err.count("skipped") == 1 and "broken.png: not a readable image" in err and "Traceback" not in err
    assert "grey.png" in out and "top 3" in out
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].startswith("file,prediction,probability,top,prob_bottom-left") and len(rows) == 1 + len(expected)
    assert (
        main(["predict", str(quadrant_run), str(tmp_path / "images" / "grey.png"), "--out", str(tmp_path / "p.json")])
        == 0
    )
    record = json.loads((tmp_path / "p.json").read_text())
    assert record["predictions"][0]["prediction"] == "top-left" and record["skipped"] == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["{bad}"], "none of the 1 file(s) given is a readable image"),
        (["{good}", "--out", "x.txt"], "--out x.txt: expected a .csv or .json file name"),
    ],
)
def test_cli_predict_errors(quadrant_run, tmp_path, capsys, args, message):
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    Image.fromarray(quadrant_images("top-left", 1)[0]).save(tmp_path / "good.png")
    args = [a.format(bad=tmp_path / "bad.jpg", good=tmp_path / "good.png") for a in args]
    code = main(["predict", str(quadrant_run), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().splitlines()[-1].startswith("medclassify predict: error:")


@pytest.mark.parametrize(
    "content, message",
    [(b"not a checkpoint", "not a readable medclassify checkpoint"), (None, "not a readable medclassify checkpoint")],
)
def test_a_file_that_is_not_a_bundle_gets_one_line(quadrant_run, tmp_path, capsys, content, message):
    path = tmp_path / "model.pt"
    path.write_bytes(
        content if content is not None else (quadrant_run / "best.pt").read_bytes()[:5000]
    )  # None: truncated
    Image.fromarray(quadrant_images("top-left", 1)[0]).save(tmp_path / "good.png")
    code = main(["predict", str(path), str(tmp_path / "good.png")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    torch.save({"format": "medclassify.checkpoint", "model_state": {}}, path)
    assert main(["predict", str(path), str(tmp_path / "good.png")]) == 2
    assert "not a medclassify model bundle (missing model, preprocessing, dataset)" in capsys.readouterr().err


def test_bundle_is_self_describing(quadrant_run):
    bundle = torch.load(quadrant_run / "best.pt", weights_only=True)
    assert bundle["model"] == {"name": "paper-cnn", "in_channels": 1, "num_classes": 5, "image_size": 28}
    assert bundle["preprocessing"]["size"] == 28 and len(bundle["preprocessing"]["mean"]) == 1
    assert bundle["dataset"]["class_names"] == CLASSES and bundle["dataset"]["task"] == "multi-class"
    metrics = json.loads((quadrant_run / "metrics.json").read_text())
    assert bundle["test_metrics"]["acc"] == pytest.approx(metrics["test"]["acc"])
    assert bundle["medclassify_version"] and bundle["val_metrics"]["epoch"] == bundle["epoch"]


def test_onnx_export_parity_metadata_and_dynamic_batch(exported_run, tmp_path):
    import onnxruntime

    result = export_model(exported_run, tmp_path / "again.onnx")
    assert result.parity_data == "test split" and result.max_abs_diff <= 1e-4 and result.parity_images > 0
    assert result.bytes == (tmp_path / "again.onnx").stat().st_size and not list(tmp_path.glob(".*"))
    session = onnxruntime.InferenceSession(str(exported_run / "model.onnx"))
    properties = session.get_modelmeta().custom_metadata_map
    assert json.loads(properties["class_names"]) == CLASSES and properties["image_size"] == "28"
    assert len(json.loads(properties["mean"])) == 1 and len(json.loads(properties["std"])) == 1
    assert isinstance(session.get_inputs()[0].shape[0], str)  # dynamic batch axis

    files = write_quadrant_files(tmp_path / "images")
    onnx = Predictor.from_run(exported_run)  # auto: the run's model.onnx, exported from this best.pt
    torch_predictor = Predictor.from_run(exported_run, backend="torch")
    assert onnx.backend.name == "onnxruntime" and torch_predictor.backend.name == "pytorch"
    a, b = onnx.predict(tmp_path / "images"), torch_predictor.predict(tmp_path / "images")
    assert len(a) == len(files)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    one = onnx.predict(tmp_path / "images" / "grey.png")  # batch of one through the dynamic axis
    assert one.predicted(0) == "top-left"


def test_stale_onnx_is_not_used(exported_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    bundle = torch.load(run / "best.pt", weights_only=True)
    bundle["epoch"] = 99  # a retrained best.pt
    torch.save(bundle, run / "best.pt")
    with pytest.warns(UserWarning, match="exported from an older best.pt"):
        assert Predictor.from_run(run).backend.name == "pytorch"
    with pytest.raises(Exception, match="run 'medclassify export"):
        Predictor.from_run(run, backend="onnx")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_with_metadata(quadrant_run, tmp_path):
    result = export_model(quadrant_run, tmp_path / "model.ts", format="torchscript")
    assert result.max_abs_diff <= 1e-4
    extra = {"medclassify.json": ""}
    loaded = torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert json.loads(extra["medclassify.json"])["dataset"]["class_names"] == CLASSES
    assert loaded(torch.zeros(3, 1, 28, 28)).shape == (3, 5)


def test_export_without_the_data_checks_random_images(quadrant_run, tmp_path):
    with pytest.warns(UserWarning, match="random images"):
        result = export_model(quadrant_run, tmp_path / "m.onnx", data_dir=str(tmp_path / "moved"))
    assert result.parity_data == "random images" and result.max_abs_diff <= 1e-4


def test_predict_with_onnx_starts_without_torch(exported_run, tmp_path):
    """The fast path: the command line never imports torch for an exported model."""
    Image.fromarray(quadrant_images("top-right", 1)[0]).save(tmp_path / "x.png")
    code = (
        "import sys; from medclassify.cli import main; "
        f"rc = main(['predict', {str(exported_run)!r}, {str(tmp_path / 'x.png')!r}]); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "top-right" in done.stdout


def test_export_rejects_a_negative_tolerance_before_any_work(quadrant_run, tmp_path):
    from medclassify.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tolerance must be a number >= 0, got -1"):
        export_model(quadrant_run, tmp_path / "m.onnx", tolerance=-1)
    assert list(tmp_path.iterdir()) == []
