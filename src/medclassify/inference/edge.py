"""A folder for a small device: the run's int8 model, its settings as JSON, a ``classify.py`` that
needs only numpy, Pillow and onnxruntime, and a README with what was measured."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.catalog import dataset_catalog
from ..errors import CheckpointError, OutputError
from ..io import file_md5
from ..runs.files import BEST_FILE
from .bundle import current_export, recorded_export
from .predictor import Predictor
from .quantize import DEFAULT_MAX_DROP, QUANTIZED_FILE, CalibrationMethod, quantize_run

EDGE_FORMAT = "medclassify-edge"
EDGE_SETTINGS = "model.json"
EDGE_SCRIPT = Path(__file__).with_name("edge_classify.py")
LATENCY_CALLS = 200


@dataclass
class EdgeResult:
    """The folder written, its files and the int8 model's measured batch-1 latency."""

    path: Path
    files: list[str]
    latency_ms_p50: float
    latency_ms_p95: float


def is_edge_folder(path: Path) -> bool:
    try:
        return json.loads((path / EDGE_SETTINGS).read_text()).get("format") == EDGE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _settings(predictor: Predictor) -> dict:
    conformal = predictor.conformal
    point = predictor.operating_point
    return {
        "format": EDGE_FORMAT,
        "model": QUANTIZED_FILE,
        "dataset": predictor.metadata["dataset"]["name"],
        "task": predictor.task,
        "class_names": predictor.class_names,
        "size": predictor.size,
        "channels": predictor.channels,
        "mean": [float(m) for m in np.ravel(predictor.mean)],
        "std": [float(s) for s in np.ravel(predictor.std)],
        # the run's fitted temperature, for the record: the model's graph already divides by it
        "temperature": (predictor.metadata.get("calibration") or {}).get("temperature", 1.0),
        "operating_point": {"threshold": point["threshold"], "positive_class": point["positive_class"]}
        if point
        else None,
        "conformal": {
            key: conformal.get(key) for key in ("alpha", "score", "threshold", "mondrian", "class_thresholds")
        }
        if conformal
        else None,
    }


def _latency(model: Path, predictor: Predictor) -> tuple[float, float]:
    """Batch-1 latency on one thread, as on a small board (median and 95th percentile, ms)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    image = predictor.normalise(np.zeros((1, predictor.channels, predictor.size, predictor.size), dtype=np.uint8))
    session.run(None, {"images": image})
    times = []
    for _ in range(LATENCY_CALLS):
        started = time.perf_counter()
        session.run(None, {"images": image})
        times.append(1000 * (time.perf_counter() - started))
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def _readme(settings: dict, gate: dict, model_bytes: int, latency: tuple[float, float], licence: str) -> str:
    acc = gate["difference"]["acc"]
    return f"""# {settings["dataset"]}: an int8 model for a small device

Written by `medclassify export RUN --format edge`. Everything here runs with numpy, Pillow and
onnxruntime alone:

```bash
pip install numpy pillow onnxruntime
python classify.py image.png            # the class, its probability{", the decision" if settings["operating_point"] else ""}{", the prediction set" if settings["conformal"] else ""}
python classify.py images/*.png --json
```

| file | what |
|---|---|
| `{QUANTIZED_FILE}` | the model, int8 (ONNX, QDQ), {model_bytes / 1e6:.2f} MB; input float32 N x {settings["channels"]} x {settings["size"]} x {settings["size"]}, output logits already divided by the run's temperature |
| `{EDGE_SETTINGS}` | classes, input size and channels, normalisation, operating point and conformal thresholds |
| `classify.py` | reads images as medclassify does and prints its answers |

Measured on the run's test split ({gate["images"]} images) when this folder was written: test
accuracy {gate["int8"]["acc"]:.4f} (float32 model: {gate["float32"]["acc"]:.4f}; difference
{acc["difference"]:+.4f}, 95% CI {acc["ci_low"]:+.4f} to {acc["ci_high"]:+.4f}), the same class as the float32
model for {gate["agreement"]:.2%} of the images. One image on one thread of the exporting machine:
{latency[0]:.2f} ms (median), {latency[1]:.2f} ms (95th percentile); a small board is slower.

Classes: {", ".join(settings["class_names"])}. Training data licence: {licence}. This is a research
model, not a medical device: its answers are not a diagnosis.
"""


def export_edge(
    run_dir: str | Path,
    out: str | Path,
    data_dir: str | None = None,
    calibration_method: CalibrationMethod = "percentile",
    max_drop: float = DEFAULT_MAX_DROP,
) -> EdgeResult:
    """Write a device folder from a run: its int8 model (quantized first when the run has no current one).

    Args:
        run_dir: a run folder of a single-label task.
        out: the folder to write; an existing one must be empty or an edge folder written before.
        data_dir: where the run's data are now, for the quantization and its gate.
        calibration_method: for a new int8 model: ``percentile``, ``minmax`` or ``entropy``.
        max_drop: for a new int8 model: the largest drop in test accuracy allowed, in percentage points.

    Returns:
        The folder, its files and the int8 model's batch-1 latency on one thread.
    """
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not (out.is_dir() and (is_edge_folder(out) or not any(out.iterdir()))):
        raise OutputError(f"{out} exists and is not an edge folder; choose another out", parameters=("out",))
    try:
        model = current_export(run_dir, run_dir / BEST_FILE, QUANTIZED_FILE)
    except CheckpointError:
        model = quantize_run(run_dir, calibration_method, max_drop, data_dir=data_dir).path
    record = recorded_export(run_dir, QUANTIZED_FILE) or {}
    predictor = Predictor.from_run(model)
    settings = {**_settings(predictor), "md5": file_md5(model)}
    info = dataset_catalog().get(settings["dataset"])
    latency = _latency(model, predictor)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(model, staging / QUANTIZED_FILE)
    (staging / EDGE_SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
    shutil.copyfile(EDGE_SCRIPT, staging / "classify.py")
    licence = info.license if info else "as the run's own data"
    (staging / "README.md").write_text(_readme(settings, record["gate"], model.stat().st_size, latency, licence))
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)
    return EdgeResult(out, sorted(p.name for p in out.iterdir()), *latency)
