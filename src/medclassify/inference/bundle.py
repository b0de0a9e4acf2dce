"""A model bundle's description (what a model is built and applied from, without its weights), its
checks, and the records of the files exported from a run: what the predictor, the exports and the
Hub folder share, so that none of them imports another for it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from ..errors import CheckpointError, first_line
from ..io import file_md5
from ..runs.files import ONNX_FILE, BundleMetadata
from ..tasks import Task

ONNX_METADATA_KEY = "medclassify"
EXPORTS_RECORD = "exports.json"  # in a run folder: the digest of each file 'medclassify export' wrote there
BUNDLE_KEYS = ("model", "preprocessing", "dataset")
ExportFormat = Literal["onnx", "torchscript", "hub"]


def bundle_description(state: dict) -> dict:
    """What describes a model bundle, without its weights or training state."""
    keys = (
        *BUNDLE_KEYS,
        "medclassify_version",
        "epoch",
        "val_metrics",
        "test_metrics",
        "calibration",
        "operating_point",
        "conformal",
        "ensemble",
    )
    return {k: state[k] for k in keys if k in state}


def check_bundle(metadata: object, path: Path) -> BundleMetadata:
    """``metadata`` as a bundle's description, once it is found to be one a model can be built and
    applied from (a hand-edited one may not be); otherwise a :class:`CheckpointError` naming ``path``."""
    missing = [k for k in BUNDLE_KEYS if not isinstance(metadata, dict) or k not in metadata]
    if missing:
        raise CheckpointError(f"{path}: not a medclassify model bundle (missing {', '.join(missing)})")
    assert isinstance(metadata, dict)  # for the type checker: a missing key above was every key
    try:
        problems = _bundle_problems(metadata["model"], metadata["preprocessing"], metadata["dataset"])
    except (KeyError, TypeError, AttributeError) as exc:
        problems = [f"incomplete description ({first_line(exc)})"]
    if problems:
        raise CheckpointError(f"{path}: not a usable model bundle ({'; '.join(problems)})")
    return cast(BundleMetadata, metadata)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _bundle_problems(spec: dict, prep: dict, data: dict) -> list[str]:
    problems = []
    classes, names = spec["num_classes"], data["class_names"]
    if not _positive_int(classes):
        problems.append(f"num_classes {classes!r} is not a count >= 1")
    elif not isinstance(names, list) or len(names) != classes or not all(isinstance(n, str) for n in names):
        problems.append(f"{len(names) if isinstance(names, list) else names!r} class names for {classes} outputs")
    size, channels = prep["size"], prep["channels"]
    if not _positive_int(size) or not 8 <= size <= 1024 or size != spec["image_size"]:
        problems.append(f"image size {size!r} (model: {spec['image_size']!r}; expected 8 to 1024, the same for both)")
    if channels not in (1, 3) or channels != spec["in_channels"]:
        problems.append(f"channels {channels!r} (model: {spec['in_channels']!r}; expected 1 or 3, the same for both)")
    for key in ("mean", "std"):
        values = prep[key]
        if (
            not isinstance(values, list)
            or len(values) != (channels if channels in (1, 3) else len(values))
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
            or (key == "std" and min(values, default=0) <= 0)
        ):
            problems.append(
                f"{key} {values!r} is not one finite number per channel" + (" above 0" if key == "std" else "")
            )
    if data["task"] not in set(Task):
        problems.append(f"task {data['task']!r} is not one of {', '.join(Task)}")
    return problems


def parse_onnx_metadata(props: dict, path: Path) -> dict:
    if ONNX_METADATA_KEY not in props:
        raise CheckpointError(
            f"{path}: an ONNX model without medclassify metadata; export it with 'medclassify export'"
        )
    try:
        metadata = json.loads(props[ONNX_METADATA_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{path}: its medclassify metadata is not valid JSON ({first_line(exc)})") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: its medclassify metadata is not a JSON object")
    return metadata


def onnx_metadata(path: Path) -> dict:
    """The medclassify metadata of an exported ONNX model, without building an inference session;
    one-line :class:`CheckpointError` for a file that is not such a model."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError, onnx's own errors
        raise CheckpointError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    return parse_onnx_metadata({p.key: p.value for p in model.metadata_props}, path)


def exports_record(run_dir: Path) -> dict[str, dict]:
    """Every export ``medclassify export`` recorded in the run folder (file name -> record); an
    unreadable record reads as none."""
    try:
        record = json.loads((run_dir / EXPORTS_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return (
        {name: entry for name, entry in record.items() if isinstance(entry, dict)} if isinstance(record, dict) else {}
    )


def recorded_export(run_dir: Path, filename: str) -> dict | None:
    """What ``medclassify export`` recorded about ``filename`` in the run folder, if anything."""
    return exports_record(run_dir).get(filename)


def current_export(run_dir: Path, checkpoint: Path, filename: str = ONNX_FILE) -> Path:
    """The run's model.onnx (or another file it exported: model.int8.onnx, model.pte) when it is the
    unchanged file exported from the current best.pt; otherwise a :class:`CheckpointError` saying why not."""
    exported = run_dir / filename
    again = f"medclassify export {run_dir}" + (" --format executorch" if exported.suffix == ".pte" else "")
    if not exported.is_file():
        raise CheckpointError(f"{exported} does not exist; run '{again}'")
    entry = recorded_export(run_dir, filename)
    if entry is None:
        raise CheckpointError(f"{exported} has no recorded digest in {run_dir / EXPORTS_RECORD}; run '{again}' again")
    if file_md5(exported) != entry.get("md5"):
        raise CheckpointError(
            f"{exported} changed since it was exported (its MD5 differs from {EXPORTS_RECORD}); run '{again}' again"
        )
    if entry.get("checkpoint_md5") != file_md5(checkpoint):
        raise CheckpointError(f"{exported} was exported from an older best.pt; run '{again}'")
    return exported


@dataclass
class ExportResult:
    """Where an export went (a file, or a Hub folder and its ``files``), its size in bytes, and how
    closely its logits matched PyTorch's."""

    path: Path
    format: ExportFormat
    bytes: int
    max_abs_diff: float
    parity_images: int
    parity_data: str  # "test split" or "random images"
    files: list[str] = field(default_factory=list)  # a Hub folder's files; empty for one exported file
