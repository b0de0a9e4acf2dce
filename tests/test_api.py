"""The Python API as a user's editor and type checker see it: typed exports, errors in the library's
own words, no global plotting state changed by importing it, and the README's example run as written."""

import os
import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

import medclassify
from medclassify import ConfigError, MedclassifyError, PostTrainingConfig, export_model

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_is_marked_typed_and_every_public_name_loads():
    assert (files("medclassify") / "py.typed").is_file()
    for name in medclassify.__all__:  # the stub's names are the ones lazy_loader serves
        assert getattr(medclassify, name) is not None, name
    assert set(medclassify.__all__) >= {"train", "TrainConfig", "evaluate_run", "calibrate_run", "Predictor"}


@pytest.mark.slow
def test_a_type_checker_sees_the_signatures_and_catches_misuse(tmp_path):
    misuse = tmp_path / "misuse.py"
    misuse.write_text(
        "import medclassify\n"
        "reveal_type(medclassify.train)\n"
        "medclassify.trian(3)\n"
        'medclassify.evaluate_run("runs/x", checkpoint="middle")\n'
        'medclassify.export_model("runs/x", format="tflite")\n'
        "medclassify.train(medclassify.TrainConfig(epochs='ten'))\n"
    )
    # the project's own mypy settings, and its cache: the package's modules are analysed once
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), str(misuse)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    out = checked.stdout
    assert checked.returncode == 1, out
    assert re.search(r'Revealed type is "def \(config: medclassify\.config\.TrainConfig.*RunResult"', out), out
    assert 'Module has no attribute "trian"' in out
    assert re.search(r"\"checkpoint\" to \"evaluate_run\" has incompatible type .*Literal\['best', 'last'\]", out), out
    assert re.search(
        r"\"format\" to \"export_model\" has incompatible type .*Literal\['onnx', 'torchscript', 'hub'\]", out
    )
    assert re.search(r'"epochs" to "TrainConfig" has incompatible type "str"; expected "int"', out), out
    assert "Found 4 errors in 1 file" in out


def test_library_errors_name_parameters_and_are_value_errors():
    with pytest.raises(ValueError, match="^format 'tflite': expected one of onnx, torchscript, hub$"):
        export_model("runs/x", format="tflite")  # type: ignore[arg-type]  # the misuse under test
    with pytest.raises(ConfigError, match="^positive_class needs threshold") as raised:
        PostTrainingConfig(positive_class="pneumonia").check()
    assert raised.value.parameters == ("positive_class", "threshold")
    assert isinstance(raised.value, MedclassifyError)


def test_importing_the_plotting_modules_leaves_the_users_backend_alone():
    code = (
        "import matplotlib\n"
        "import medclassify.reporting.report, medclassify.explain.gradcam, medclassify.experiments.tune\n"
        "import medclassify.evaluation.figures, medclassify.training.tracking\n"
        "print(matplotlib.get_backend())\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "MPLBACKEND": "svg"}, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "svg"


def test_the_readmes_python_example_runs_as_written(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## From Python") :]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDCLASSIFY_DATA", str(tmp_path / "data"))
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    result, evaluated, calibration = namespace["result"], namespace["again"], namespace["calibration"]
    assert result.run_dir == Path("runs/python-demo") and (tmp_path / "runs/python-demo/best.pt").is_file()
    assert evaluated.test["acc"] == result.metrics["test"]["acc"]
    assert calibration.temperature is not None and calibration.lines()[0].startswith("temperature ")
