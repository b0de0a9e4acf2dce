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
from .bundle import current_export, onnx_metadata
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
class GatedExport:
    """A model written for a smaller runtime after it was run on the test split beside the float32
    model: what ``quantize_run`` and ``export_executorch`` return and record in ``exports.json``."""

    path: Path
    format: str  # "onnx-int8", "executorch" or "executorch-int8"
    bytes: int
    reference: str  # the float32 model it was compared with, in words
    reference_bytes: int | None  # that model's file size, when it is a file of the same kind
    candidate: str  # the key of this model's figures in gate, conformal and operating_point
    calibration: dict | None  # int8: {"method", "images"}
    gate: dict  # float32 and candidate test figures, their differences with intervals, McNemar, agreement
    conformal: dict | None  # the candidate's coverage of the run's conformal sets, beside float32's
    operating_point: dict | None  # the candidate's sensitivity/specificity at the run's threshold

    def lines(self) -> list[str]:
        """The outcome as the command line prints it."""
        gate, name = self.gate, self.candidate
        acc = gate["difference"]["acc"]
        size = f"{self.format}, {self.bytes / 1e6:.2f} MB"
        if self.reference_bytes:
            size += f", {self.bytes / self.reference_bytes:.0%} of float32's {self.reference_bytes / 1e6:.2f} MB"
        if self.calibration:
            size += f"; {self.calibration['method']} calibration on {self.calibration['images']} training images"
        lines = [
            f"wrote {self.path} ({size})",
            f"test accuracy: {self.reference} {gate['float32']['acc']:.4f}, {name} {gate[name]['acc']:.4f} "
            f"(difference {acc['difference']:+.4f}, 95% CI {acc['ci_low']:+.4f} to {acc['ci_high']:+.4f}; "
            f"McNemar p = {gate['mcnemar']['p_value']:.3g}); same class for {gate['agreement']:.2%} of "
            f"{gate['images']} images; largest probability difference {gate['max_probability_difference']:.3g}",
        ]
        if self.conformal:
            lines.append(
                f"conformal sets: test coverage float32 {self.conformal['float32']:.4f}, {name} "
                f"{self.conformal[name]:.4f} (target {self.conformal['target']:.2f})"
            )
        if self.operating_point:
            point = self.operating_point
            lines.append(
                f"operating point (threshold {point['threshold']:.4g} for '{point['positive_class']}'): {name} "
                f"sensitivity {point[name]['sensitivity']:.4f}, specificity {point[name]['specificity']:.4f}; "
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


def _gate(y_true: np.ndarray, float_prob: np.ndarray, candidate_prob: np.ndarray, task: Task, candidate: str) -> dict:
    from ..evaluation.stats import Side, bootstrap_difference, mcnemar

    float_side, candidate_side = Side(y_true, [float_prob], task), Side(y_true, [candidate_prob], task)
    return {
        "images": len(y_true),
        "float32": {name: float_side.metric(name) for name in ("acc", "auc", "f1_macro")},
        candidate: {name: candidate_side.metric(name) for name in ("acc", "auc", "f1_macro")},
        "difference": bootstrap_difference(float_side, candidate_side, paired=True, n_boot=GATE_RESAMPLES),
        "mcnemar": mcnemar(float_side, candidate_side),
        "agreement": float(np.mean(float_prob.argmax(1) == candidate_prob.argmax(1))),
        "max_probability_difference": float(np.abs(float_prob - candidate_prob).max()),
    }


def _conformal(
    predictor: Predictor, y_true: np.ndarray, float_prob: np.ndarray, candidate_prob: np.ndarray, candidate: str
) -> dict | None:
    from ..evaluation.conformal import prediction_sets

    fitted = predictor.conformal
    if not fitted:
        return None

    def coverage(prob: np.ndarray) -> float:
        return float(np.mean(prediction_sets(prob, fitted)[np.arange(len(y_true)), y_true]))

    return {"target": 1 - fitted["alpha"], "float32": coverage(float_prob), candidate: coverage(candidate_prob)}


def _operating_point(
    predictor: Predictor, y_true: np.ndarray, float_prob: np.ndarray, candidate_prob: np.ndarray, candidate: str
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
        candidate: operating_point(positive, candidate_prob[:, column], point["threshold"]),
    }


@dataclass
class GateTarget:
    """What a gated export is written for and judged on."""

    run_dir: Path
    predictor: Predictor  # the run's float32 model through PyTorch
    train: Split
    test: Split
    max_drop: float


def gate_target(run_dir: str | Path, data_dir: str | None, max_drop: object, what: str) -> GateTarget:
    """The run, its model and the training and test splits a gated export needs; one-line errors for
    a folder that is not a single-label run, data not at hand, or a ``max_drop`` that is not a number >= 0.

    Args:
        run_dir: the run folder.
        data_dir: where the run's data are now, if they moved since training.
        max_drop: the largest drop in test accuracy allowed, in percentage points.
        what: the export in words, for the errors (``int8 quantization``).

    Returns:
        The run, its PyTorch predictor and its splits.
    """
    max_drop = check_max_drop(max_drop)
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    if not run_dir.is_dir() or not run.config_path.is_file() or not (run_dir / BEST_FILE).is_file():
        raise CheckpointError(
            f"{run_dir}: not a run folder; {what} is judged on a run's test split (an ensemble or a bundle has none)"
        )
    predictor = Predictor.from_run(run_dir, device="cpu", backend="torch")
    if predictor.multi_label:
        raise CheckpointError(f"{run_dir}: a multi-label run; {what} takes single-label runs")
    from ..runs import load_run_data

    try:
        data = load_run_data(run.config(data_dir))
    except DataError as exc:
        raise DataError(
            f"{run_dir}: {what} needs the run's training and test data ({exc}); pass data_dir where they are now",
            parameters=("data_dir",),
        ) from None
    return GateTarget(run_dir, predictor, data.splits["train"], data.splits["test"], max_drop)


def check_calibration_images(calibration_images: object) -> int:
    if isinstance(calibration_images, bool) or not isinstance(calibration_images, int) or calibration_images < 1:
        raise ConfigError(
            f"calibration_images must be a whole number >= 1, got {calibration_images!r}",
            parameters=("calibration_images",),
        )
    return calibration_images


def calibration_pixels(target: GateTarget, count: int) -> np.ndarray:
    """``count`` training images (uint8, at the model's size), drawn class by class."""
    return target.train.images.numpy()[stratified_sample(target.train.labels.numpy(), count)]


def judge(
    target: GateTarget,
    out: Path,
    candidate: str,
    float_prob: np.ndarray,
    candidate_prob: np.ndarray,
) -> tuple[dict, dict | None, dict | None]:
    """The gate's figures, the conformal coverage and the operating point of a candidate model's
    test probabilities beside float32's; a one-line :class:`CheckpointError` when its accuracy drops
    by more than the target's ``max_drop`` (the caller then writes nothing)."""
    y_true = target.test.labels.numpy()
    predictor = target.predictor
    gate = _gate(y_true, float_prob, candidate_prob, Task(predictor.task), candidate)
    drop = 100 * (gate["float32"]["acc"] - gate[candidate]["acc"])
    if drop > target.max_drop:
        raise CheckpointError(
            f"{out}: {candidate} test accuracy {gate[candidate]['acc']:.4f} against float32's "
            f"{gate['float32']['acc']:.4f}, a drop of {drop:.2f} points, more than max_drop {target.max_drop:g}; "
            "nothing was written",
            parameters=("max_drop",),
        )
    return (
        gate,
        _conformal(predictor, y_true, float_prob, candidate_prob, candidate),
        _operating_point(predictor, y_true, float_prob, candidate_prob, candidate),
    )


def record_gated(target: GateTarget, result: GatedExport) -> None:
    """The gated export's digest and figures in the run's ``exports.json``."""
    record_export(
        target.run_dir,
        result.path,
        result.format,
        file_md5(target.run_dir / BEST_FILE),
        {
            "gate": result.gate,
            "max_drop": target.max_drop,
            "calibration": result.calibration,
            "conformal": result.conformal,
            "operating_point": result.operating_point,
        },
    )


def quantize_run(
    run_dir: str | Path,
    calibration_method: CalibrationMethod = "percentile",
    max_drop: float = DEFAULT_MAX_DROP,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    data_dir: str | None = None,
) -> GatedExport:
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
    if calibration_method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"calibration_method {calibration_method!r}: expected one of {', '.join(CALIBRATION_METHODS)}",
            parameters=("calibration_method",),
        )
    count = check_calibration_images(calibration_images)
    target = gate_target(run_dir, data_dir, max_drop, "int8 quantization")
    try:
        float_path = current_export(target.run_dir, target.run_dir / BEST_FILE)
    except CheckpointError:  # none yet, or from an older best.pt: the float32 export (checked against PyTorch) first
        float_path = export_model(target.run_dir, data_dir=data_dir).path
    with folder_lock(target.run_dir, "export"):
        return _quantize(target, float_path, calibration_pixels(target, count), calibration_method)


def quantize_onnx(float_path: Path, out: Path, calibration: np.ndarray, method: str) -> None:
    """ONNX Runtime's static quantization of ``float_path`` into ``out``: pre-processing (BatchNorm
    folded), QDQ, per-channel 7-bit int8 weights, uint8 activations calibrated on ``calibration``
    (the model's normalised float32 input, N x C x H x W) with ``method``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # batches of one size: ONNX Runtime's histogram calibrators (percentile, entropy) fail on a
    # shorter last batch ("inhomogeneous shape")
    batch = max(d for d in range(1, 65) if len(calibration) % d == 0)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(calibration), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.batches, None)
            return None if start is None else {"images": calibration[start : start + batch]}

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared))
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their bins and tensors
            quantize_static(
                str(prepared),
                str(out),
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


def _quantize(target: GateTarget, float_path: Path, calibration: np.ndarray, method: str) -> GatedExport:
    import onnx

    out = target.run_dir / QUANTIZED_FILE
    with tempfile.TemporaryDirectory() as scratch, atomic_path(out) as tmp:
        quantized = Path(scratch) / "int8.onnx"
        quantize_onnx(float_path, quantized, target.predictor.normalise(calibration), method)
        proto = onnx.load(str(quantized))
        del proto.metadata_props[:]
        metadata = {**onnx_metadata(float_path), "format": "onnx-int8", "quantization": method}
        for key, value in onnx_properties(metadata).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        pixels = target.test.images.numpy()
        gate, conformal, point = judge(
            target, out, "int8", _onnx_probabilities(float_path, pixels), _onnx_probabilities(tmp, pixels)
        )
        size = tmp.stat().st_size
    result = GatedExport(
        out,
        "onnx-int8",
        size,
        "float32",
        float_path.stat().st_size,
        "int8",
        {"method": method, "images": len(calibration)},
        gate,
        conformal,
        point,
    )
    record_gated(target, result)
    return result
