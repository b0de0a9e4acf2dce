"""ExecuTorch programs (``.pte``) for phones and embedded boards, behind the same gate as int8 ONNX.

The run's model (its fitted temperature inside the graph) is captured with ``torch.export`` at batch
1, the shape a device runs, lowered to ExecuTorch with the XNNPACK delegate and written as
``RUN/model.pte``. For ``int8``, PyTorch's PT2E flow quantizes it first with the XNNPACK quantizer
(symmetric per-channel int8 weights, int8 activations, each BatchNorm folded into its convolution),
calibrated on a class-stratified sample of the training split, into ``RUN/model.int8.pte``. The
program is then run on the test split with ExecuTorch's own runtime beside the PyTorch float32
model; it is written only when its accuracy drops by at most ``max_drop`` points. The bundle's
description travels inside the program as a constant method, so the file alone says how to use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ConfigError
from ..io import atomic_path, file_md5, folder_lock
from ..runs.files import BEST_FILE, PTE_FILE
from .export import TemperatureScaled
from .predictor import PTE_METADATA_METHOD, ExecuTorchBackend, Predictor, quiet_executorch_import
from .quantize import (
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_MAX_DROP,
    GatedExport,
    GateTarget,
    calibration_pixels,
    check_calibration_images,
    gate_target,
    judge,
    record_gated,
)

PTE_INT8_FILE = "model.int8.pte"
CALIBRATION_BATCH = 32
MAX_BATCH = 1024  # the batch sizes a quantized model may later be exported for
EXECUTORCH_MISSING = "ExecuTorch export needs the executorch package: pip install 'medclassify[edge]'"


def _lowering() -> tuple[Any, Any]:
    try:
        with quiet_executorch_import():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise ConfigError(EXECUTORCH_MISSING, parameters=("format",)) from None
    return XnnpackPartitioner, to_edge_transform_and_lower


def pt2e_int8(model: torch.nn.Module, calibration: np.ndarray) -> torch.nn.Module:
    """The model through PT2E: XNNPACK's quantizer (symmetric, per-channel weights), its observers
    calibrated on ``calibration`` (the model's normalised float32 input, N x C x H x W), int8."""
    with quiet_executorch_import():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)  # the quantized graph keeps this range
    example = torch.zeros(2, *calibration.shape[1:])
    captured = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for start in range(0, len(calibration), CALIBRATION_BATCH):
            prepared(torch.from_numpy(calibration[start : start + CALIBRATION_BATCH]))
    return convert_pt2e(prepared)


def write_pte(model: torch.nn.Module, metadata: dict, path: Path, channels: int, size: int, batch: int = 1) -> None:
    """``model`` as an ExecuTorch program for ``batch`` images at a time (XNNPACK delegate), with the bundle's
    description as the constant method ``medclassify_metadata`` (UTF-8 JSON bytes)."""
    partitioner, lower = _lowering()
    program = torch.export.export(model, (torch.zeros(batch, channels, size, size),))
    description = torch.frombuffer(bytearray(json.dumps(metadata).encode()), dtype=torch.uint8)
    lowered = lower(program, partitioner=[partitioner()], constant_methods={PTE_METADATA_METHOD: description})
    path.write_bytes(lowered.to_executorch().buffer)


def export_executorch(
    run_dir: str | Path,
    quantize: Literal["int8"] | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    data_dir: str | None = None,
) -> GatedExport:
    """Write ``RUN/model.pte`` (float32) or ``RUN/model.int8.pte``, an ExecuTorch program with the
    XNNPACK delegate, if ExecuTorch's runtime keeps the accuracy of the PyTorch model on the test split.

    Args:
        run_dir: a run folder of a single-label task (its test split gates; int8 calibrates on its training split).
        quantize: ``None`` for float32, ``"int8"`` for PT2E quantization with the XNNPACK quantizer.
        max_drop: the largest drop in test accuracy allowed, in percentage points; above it nothing is written.
        calibration_images: int8: training images for the calibration, drawn class by class.
        data_dir: where the run's data are now, if they moved since training.

    Returns:
        Where the program went, its size, and the gate's figures against the PyTorch float32 model.
    """
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize {quantize!r}: expected int8 or none", parameters=("quantize",))
    count = check_calibration_images(calibration_images)
    _lowering()  # the missing package said before any work
    target = gate_target(run_dir, data_dir, max_drop, "an ExecuTorch export")
    with folder_lock(target.run_dir, "export"):
        return _export(target, quantize, count)


def _export(target: GateTarget, quantize: str | None, calibration_images: int) -> GatedExport:
    predictor = target.predictor
    temperature = predictor.temperature
    model: torch.nn.Module = predictor.model.eval()
    if temperature != 1.0:
        model = TemperatureScaled(model, temperature).eval()
    calibration = None
    if quantize:
        pixels = calibration_pixels(target, calibration_images)
        model = pt2e_int8(model, predictor.normalise(pixels))
        calibration = {"method": "minmax observers (XNNPACK quantizer)", "images": len(pixels)}
    fmt, candidate = ("executorch-int8", "int8") if quantize else ("executorch", "executorch")
    metadata = {
        **predictor.metadata,
        "checkpoint_md5": file_md5(target.run_dir / BEST_FILE),
        "format": fmt,
        "temperature_in_graph": temperature != 1.0,
    }
    out = target.run_dir / (PTE_INT8_FILE if quantize else PTE_FILE)
    with atomic_path(out) as tmp:
        write_pte(model, metadata, tmp, predictor.channels, predictor.size)
        backend = ExecuTorchBackend(tmp)
        pixels = target.test.images.numpy()
        candidate_prob = Predictor(backend.metadata, backend, tmp).predict_pixels(pixels)
        gate, conformal, point = judge(target, out, candidate, predictor.predict_pixels(pixels), candidate_prob)
        size = tmp.stat().st_size
    float_pte = target.run_dir / PTE_FILE
    result = GatedExport(
        out,
        fmt,
        size,
        "PyTorch float32",
        float_pte.stat().st_size if quantize and float_pte.is_file() else None,
        candidate,
        calibration,
        gate,
        conformal,
        point,
    )
    record_gated(target, result)
    return result
