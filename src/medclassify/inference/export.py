"""Export a trained model for runtimes without medclassify: ONNX (ONNX Runtime, small devices) or
TorchScript (LibTorch), with the bundle's metadata inside the file and a parity check.

The exported file is written beside itself under a temporary name, compared with PyTorch on the
run's test split (or, when those data are not at hand, on random images), and only renamed into
place when every logit agrees within the tolerance.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from ..defaults import EXPORT_FORMATS, EXPORT_SUFFIXES, PARITY_TOLERANCE
from ..errors import CheckpointError, ConfigError
from ..io import atomic_path, file_md5, folder_lock, write_json
from ..runs.files import ONNX_FILE
from .bundle import EXPORTS_RECORD, ONNX_METADATA_KEY, ExportFormat, ExportResult, exports_record
from .hub import export_hub
from .hub_folder import is_hub_folder
from .parity import max_logit_difference, parity_pixels
from .predictor import Predictor

TORCHSCRIPT_METADATA = "medclassify.json"


class TemperatureScaled(torch.nn.Module):
    """The model with its fitted temperature inside the graph: logits / T, so that any runtime's
    softmax gives the calibrated probabilities."""

    def __init__(self, model: torch.nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images) / self.temperature


def onnx_properties(metadata: dict) -> dict[str, str]:
    """ONNX metadata_props: the whole bundle description as JSON, and its main fields on their own
    so that other runtimes can read them without parsing medclassify's layout."""
    prep, data = metadata["preprocessing"], metadata["dataset"]
    return {
        ONNX_METADATA_KEY: json.dumps(metadata),
        "class_names": json.dumps(data["class_names"]),
        "task": data["task"],
        "image_size": str(prep["size"]),
        "channels": str(prep["channels"]),
        "mean": json.dumps(prep["mean"]),
        "std": json.dumps(prep["std"]),
        "input": "float32 N x C x H x W, (pixel / 255 - mean) / std; output: logits N x classes"
        + (" (already divided by the fitted temperature)" if metadata.get("temperature_in_graph") else ""),
    }


def write_onnx(model: torch.nn.Module, metadata: dict, path: Path, channels: int, size: int) -> None:
    """ONNX with a dynamic batch axis (input ``images``, output ``logits``) and the metadata."""
    import onnx

    example = torch.zeros(2, channels, size, size)
    program = torch.onnx.export(
        model.eval(),
        (example,),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
        verbose=False,
    )
    if program is None:  # torch returns None only for the TorchScript exporter, not the dynamo one used here
        raise CheckpointError(f"{path}: torch.onnx.export returned no program")
    proto = program.model_proto  # in memory, so that the weights end up inside the one file
    for key, value in onnx_properties(metadata).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


@contextmanager
def _torchscript_allowed() -> Iterator[None]:
    """torch marks TorchScript deprecated; LibTorch still loads it, and the user asked for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def write_torchscript(model: torch.nn.Module, metadata: dict, path: Path, channels: int, size: int) -> None:
    """Trace ``model`` and save it with the bundle's metadata as an extra file."""
    with _torchscript_allowed():
        traced = torch.jit.trace(model.eval(), torch.zeros(2, channels, size, size))
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})


def _torchscript_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    with _torchscript_allowed():
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(batch)).numpy()

    return run


def _onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"images": batch})[0]


def export_model(
    source: str | Path,
    out: str | Path | None = None,
    format: ExportFormat = "onnx",
    data_dir: str | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportResult:
    """Export a trained model for a runtime without medclassify, after checking its logits against PyTorch's.

    Args:
        source: a run folder (its ``best.pt``) or a ``.pt`` bundle; ``"hub"`` needs a run folder.
        out: the file (folder for ``"hub"``) to write; default ``RUN/model.onnx``, ``RUN/model.ts``
            or ``RUN/hub``, or the bundle's name with the format's suffix.
        format: ``"onnx"`` (ONNX Runtime), ``"torchscript"`` (LibTorch) or ``"hub"`` (a Hugging Face
            Hub model folder with safetensors weights and the model card).
        data_dir: where the run's data are now, for the parity check on its test split.
        tolerance: the largest logit difference to PyTorch the export may have; above it nothing is written.

    Returns:
        Where the export went, its size and the largest logit difference measured.
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"format {format!r}: expected one of {', '.join(EXPORT_FORMATS)}", parameters=("format",))
    if not tolerance >= 0:
        raise ConfigError(f"tolerance must be a number >= 0, got {tolerance}", parameters=("tolerance",))
    if format == "hub":
        return export_hub(source, out, data_dir, tolerance)
    source = Path(source)
    if is_hub_folder(source) and not (source / "best.pt").is_file():
        raise CheckpointError(f"{source}: a Hub folder; export from the run folder it came from")
    if source.suffix.lower() == ".onnx":
        raise CheckpointError(f"{source}: already an exported ONNX model; export from the run folder or its best.pt")
    predictor = Predictor.from_run(source, device="cpu", backend="torch")
    run_dir = source if source.is_dir() else None
    if out is None:
        out = (
            source / (ONNX_FILE if format == "onnx" else "model" + EXPORT_SUFFIXES[format])
            if run_dir
            else source.with_suffix(EXPORT_SUFFIXES[format])
        )
    out = Path(out)
    in_run = run_dir is not None and out.resolve().parent == run_dir.resolve()
    with folder_lock(run_dir, "export") if run_dir is not None else nullcontext():
        return _export(predictor, run_dir, out, format, data_dir, tolerance, in_run)


def record_export(run_dir: Path, out: Path, format: str, checkpoint_md5: str, measured: dict | None = None) -> None:
    """The exported file's own digest in the run folder, so that an edited file is noticed, beside the
    records of the run's other exports; ``measured``: what was measured of it (an int8 model's gate)."""
    record = exports_record(run_dir)
    record[out.name] = {
        "md5": file_md5(out),
        "format": format,
        "checkpoint_md5": checkpoint_md5,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        **(measured or {}),
    }
    write_json(run_dir / EXPORTS_RECORD, record)


def _export(
    predictor: Predictor,
    run_dir: Path | None,
    out: Path,
    format: ExportFormat,
    data_dir: str | None,
    tolerance: float,
    in_run: bool,
) -> ExportResult:
    temperature = predictor.temperature  # a calibrated bundle's temperature goes into the graph
    checkpoint_md5 = file_md5(predictor.source)
    metadata = {
        **predictor.metadata,
        "checkpoint_md5": checkpoint_md5,
        "format": format,
        "temperature_in_graph": temperature != 1.0,
    }
    model = TemperatureScaled(predictor.model, temperature) if temperature != 1.0 else predictor.model
    pixels, parity_data = parity_pixels(run_dir, predictor, data_dir)
    with atomic_path(out) as tmp:
        if format == "onnx":
            write_onnx(model, metadata, tmp, predictor.channels, predictor.size)
            runner = _onnx_runner(tmp)
        else:
            write_torchscript(model, metadata, tmp, predictor.channels, predictor.size)
            runner = _torchscript_runner(tmp)
        difference = max_logit_difference(
            lambda batch: predictor.logits(batch) / temperature, runner, pixels, predictor.normalise
        )
        if not difference <= tolerance:
            raise CheckpointError(
                f"{out}: the {format} model differs from PyTorch by {difference:.3g} on the "
                f"{parity_data} (tolerance {tolerance:g}); nothing was written"
            )
        size = tmp.stat().st_size
    if in_run and run_dir is not None:
        record_export(run_dir, out, format, checkpoint_md5)
    return ExportResult(out, format, size, difference, len(pixels), parity_data, [out.name])
