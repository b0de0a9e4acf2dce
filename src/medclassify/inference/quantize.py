"""int8 models for small CPUs, with an accuracy gate.

ONNX Runtime's static quantization: the run's float32 ``model.onnx`` is pre-processed by ONNX
Runtime (shape inference and its graph optimisation, which folds each BatchNorm into the convolution
before it), then quantized in the QDQ format with per-channel int8 weights (7 bits of range, see
below) and uint8 activations whose
ranges are calibrated on a class-stratified sample of the run's training split, passed through the
run's own preprocessing. The int8 model is then run on the test split beside the float32 one; it is
written only when its accuracy drops by at most ``max_drop`` percentage points, and the comparison
(paired bootstrap intervals, McNemar's test, agreement, the largest probability difference) and the
int8 model's own conformal coverage and operating point go into ``exports.json`` with its MD5.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from ..errors import CheckpointError, ConfigError, DataError
from ..io import atomic_path, file_md5, folder_lock
from ..runs.files import BEST_FILE, RunDir
from ..tasks import Task
from .bundle import current_onnx_export, onnx_metadata
from .export import export_model, onnx_properties, record_export
from .predictor import OnnxBackend, Predictor

if TYPE_CHECKING:
    from ..data.memory import Split

QUANTIZED_FILE = "model.int8.onnx"
# percentile by default: on both shared datasets it kept the most test accuracy (BloodMNIST 0.9220
# against minmax's 0.9217, OrganAMNIST 0.8804 against 0.8796, paper recipe; docs/guide/predict-explain-export.md)
CalibrationMethod = Literal["percentile", "minmax", "entropy"]
CALIBRATION_METHODS: tuple[CalibrationMethod, ...] = get_args(CalibrationMethod)
DEFAULT_MAX_DROP = 1.0  # percentage points of test accuracy
DEFAULT_CALIBRATION_IMAGES = 512
GATE_RESAMPLES = 1000


@dataclass
class QuantizationResult:
    """What ``quantize_run`` wrote and measured."""

    path: Path
    bytes: int
    float_bytes: int
    method: str
    calibration_images: int
    gate: dict  # float32 and int8 test figures, their differences with intervals, McNemar, agreement
    conformal: dict | None  # the int8 model's coverage of the run's conformal sets, beside float32's
    operating_point: dict | None  # the int8 model's sensitivity/specificity at the run's threshold

    def lines(self) -> list[str]:
        """The outcome as the command line prints it."""
        gate = self.gate
        acc = gate["difference"]["acc"]
        lines = [
            f"wrote {self.path} (int8, {self.bytes / 1e6:.2f} MB, {self.bytes / self.float_bytes:.0%} of float32's "
            f"{self.float_bytes / 1e6:.2f} MB; {self.method} calibration on {self.calibration_images} training images)",
            f"test accuracy: float32 {gate['float32']['acc']:.4f}, int8 {gate['int8']['acc']:.4f} "
            f"(difference {acc['difference']:+.4f}, 95% CI {acc['ci_low']:+.4f} to {acc['ci_high']:+.4f}; "
            f"McNemar p = {gate['mcnemar']['p_value']:.3g}); same class for {gate['agreement']:.2%} of "
            f"{gate['images']} images; largest probability difference {gate['max_probability_difference']:.3g}",
        ]
        if self.conformal:
            lines.append(
                f"conformal sets: test coverage float32 {self.conformal['float32']:.4f}, int8 "
                f"{self.conformal['int8']:.4f} (target {self.conformal['target']:.2f})"
            )
        if self.operating_point:
            point = self.operating_point
            lines.append(
                f"operating point (threshold {point['threshold']:.4g} for '{point['positive_class']}'): int8 "
                f"sensitivity {point['int8']['sensitivity']:.4f}, specificity {point['int8']['specificity']:.4f}; "
                f"float32 {point['float32']['sensitivity']:.4f}, {point['float32']['specificity']:.4f}"
            )
        return lines


def check_max_drop(max_drop: object) -> float:
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not math.isfinite(max_drop):
        raise ConfigError(
            f"max_drop must be a number of percentage points >= 0, got {max_drop!r}", parameters=("max_drop",)
        )
    if max_drop < 0:
        raise ConfigError(
            f"max_drop must be a number of percentage points >= 0, got {max_drop}", parameters=("max_drop",)
        )
    return float(max_drop)


def stratified_sample(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Up to ``count`` indices with every class as equally represented as its images allow."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: list[int] = []
    for rank in range(max(len(p) for p in per_class)):
        chosen += [int(p[rank]) for p in per_class if rank < len(p)]
        if len(chosen) >= count:
            break
    return np.sort(np.array(chosen[:count]))


def _onnx_probabilities(path: Path, pixels: np.ndarray) -> np.ndarray:
    """The probabilities an ONNX file gives ``pixels``, through the predictor ``predict`` uses (the
    file may be a temporary one, before any record vouches for it)."""
    backend = OnnxBackend(path)
    return Predictor(backend.metadata, backend, path).predict_pixels(pixels)


def _gate(y_true: np.ndarray, float_prob: np.ndarray, int8_prob: np.ndarray, task: Task) -> dict:
    from ..evaluation.stats import Side, bootstrap_difference, mcnemar

    float_side, int8_side = Side(y_true, [float_prob], task), Side(y_true, [int8_prob], task)
    return {
        "images": len(y_true),
        "float32": {name: float_side.metric(name) for name in ("acc", "auc", "f1_macro")},
        "int8": {name: int8_side.metric(name) for name in ("acc", "auc", "f1_macro")},
        "difference": bootstrap_difference(float_side, int8_side, paired=True, n_boot=GATE_RESAMPLES),
        "mcnemar": mcnemar(float_side, int8_side),
        "agreement": float(np.mean(float_prob.argmax(1) == int8_prob.argmax(1))),
        "max_probability_difference": float(np.abs(float_prob - int8_prob).max()),
    }


def _conformal(predictor: Predictor, y_true: np.ndarray, float_prob: np.ndarray, int8_prob: np.ndarray) -> dict | None:
    from ..evaluation.conformal import prediction_sets

    fitted = predictor.conformal
    if not fitted:
        return None

    def coverage(prob: np.ndarray) -> float:
        return float(np.mean(prediction_sets(prob, fitted)[np.arange(len(y_true)), y_true]))

    return {"target": 1 - fitted["alpha"], "float32": coverage(float_prob), "int8": coverage(int8_prob)}


def _operating_point(
    predictor: Predictor, y_true: np.ndarray, float_prob: np.ndarray, int8_prob: np.ndarray
) -> dict | None:
    from ..evaluation.threshold import operating_point

    point = predictor.operating_point
    if not point:
        return None
    column = predictor.class_names.index(point["positive_class"])
    positive = y_true == column
    return {
        "threshold": point["threshold"],
        "positive_class": point["positive_class"],
        "float32": operating_point(positive, float_prob[:, column], point["threshold"]),
        "int8": operating_point(positive, int8_prob[:, column], point["threshold"]),
    }


def quantize_run(
    run_dir: str | Path,
    calibration_method: CalibrationMethod = "percentile",
    max_drop: float = DEFAULT_MAX_DROP,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    data_dir: str | None = None,
) -> QuantizationResult:
    """Write ``RUN/model.int8.onnx``, an int8 copy of the run's model, if it keeps the accuracy.

    Args:
        run_dir: a run folder of a single-label task (its training split calibrates, its test split gates).
        calibration_method: how the activations' ranges are calibrated: ``percentile`` (99.999th), ``minmax``
            or ``entropy``.
        max_drop: the largest drop in test accuracy allowed, in percentage points; above it nothing is written.
        calibration_images: training images for the calibration, drawn class by class.
        data_dir: where the run's data are now, if they moved since training.

    Returns:
        Where the int8 model went, its size against float32's, and the gate's figures.
    """
    max_drop = check_max_drop(max_drop)
    if calibration_method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"calibration_method {calibration_method!r}: expected one of {', '.join(CALIBRATION_METHODS)}",
            parameters=("calibration_method",),
        )
    if isinstance(calibration_images, bool) or not isinstance(calibration_images, int) or calibration_images < 1:
        raise ConfigError(
            f"calibration_images must be a whole number >= 1, got {calibration_images!r}",
            parameters=("calibration_images",),
        )
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    if not run_dir.is_dir() or not run.config_path.is_file() or not (run_dir / BEST_FILE).is_file():
        raise CheckpointError(
            f"{run_dir}: not a run folder; int8 quantization calibrates on a run's training split "
            "(an ensemble or a bundle has none)"
        )
    predictor = Predictor.from_run(run_dir, device="cpu", backend="torch")
    if predictor.multi_label:
        raise CheckpointError(f"{run_dir}: a multi-label run; int8 quantization takes single-label runs")
    from ..runs import load_run_data

    try:
        data = load_run_data(run.config(data_dir))
    except DataError as exc:
        raise DataError(
            f"{run_dir}: int8 quantization needs the run's training and test data ({exc}); "
            "pass data_dir where they are now",
            parameters=("data_dir",),
        ) from None
    try:
        float_path = current_onnx_export(run_dir, run_dir / BEST_FILE)
    except CheckpointError:  # none yet, or from an older best.pt: the float32 export (checked against PyTorch) first
        float_path = export_model(run_dir, data_dir=data_dir).path
    train, test = data.splits["train"], data.splits["test"]
    sample = stratified_sample(train.labels.numpy(), calibration_images)
    calibration = train.images.numpy()[sample]
    with folder_lock(run_dir, "export"):
        return _quantize(predictor, run_dir, float_path, calibration, test, calibration_method, max_drop)


def _quantize(
    predictor: Predictor,
    run_dir: Path,
    float_path: Path,
    calibration: np.ndarray,
    test: Split,
    method: str,
    max_drop: float,
) -> QuantizationResult:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    normalise = predictor.normalise

    # batches of one size: ONNX Runtime's histogram calibrators (percentile, entropy) fail on a
    # shorter last batch ("inhomogeneous shape")
    batch = max(d for d in range(1, 65) if len(calibration) % d == 0)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(calibration), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.batches, None)
            return None if start is None else {"images": normalise(calibration[start : start + batch])}

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    out = run_dir / QUANTIZED_FILE
    with tempfile.TemporaryDirectory() as scratch, atomic_path(out) as tmp:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared))
        quantized = Path(scratch) / "int8.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their bins and tensors
            quantize_static(
                str(prepared),
                str(quantized),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                # 7-bit weights: CPUs without VNNI multiply uint8 by int8 into 16-bit sums that saturate
                # with full 8-bit weights (paper-cnn lost 3 points of BloodMNIST accuracy that way here)
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
            )
        proto = onnx.load(str(quantized))
        del proto.metadata_props[:]
        metadata = {**onnx_metadata(float_path), "format": "onnx-int8", "quantization": method}
        for key, value in onnx_properties(metadata).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        pixels, y_true = test.images.numpy(), test.labels.numpy()
        float_prob = _onnx_probabilities(float_path, pixels)
        int8_prob = _onnx_probabilities(tmp, pixels)
        task = Task(predictor.task)
        gate = _gate(y_true, float_prob, int8_prob, task)
        drop = 100 * (gate["float32"]["acc"] - gate["int8"]["acc"])
        if drop > max_drop:
            raise CheckpointError(
                f"{out}: int8 test accuracy {gate['int8']['acc']:.4f} against float32's {gate['float32']['acc']:.4f}, "
                f"a drop of {drop:.2f} points, more than max_drop {max_drop:g}; nothing was written",
                parameters=("max_drop",),
            )
        size = tmp.stat().st_size
    result = QuantizationResult(
        out,
        size,
        float_path.stat().st_size,
        method,
        len(calibration),
        gate,
        _conformal(predictor, y_true, float_prob, int8_prob),
        _operating_point(predictor, y_true, float_prob, int8_prob),
    )
    record_export(
        run_dir,
        out,
        "onnx-int8",
        file_md5(run_dir / BEST_FILE),
        {
            "gate": gate,
            "max_drop": max_drop,
            "calibration": {"method": method, "images": len(calibration)},
            "conformal": result.conformal,
            "operating_point": result.operating_point,
        },
    )
    return result
