"""Checkpoints: plain dicts of tensors and primitives, saved atomically and loaded with
``weights_only=True`` so that loading never runs pickled code."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..errors import CheckpointError, first_line
from ..io import atomic_path

FORMAT = "medclassify.checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict) -> None:
    buffer = io.BytesIO()  # serialised first, so that a full disk is an OSError of the write below
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file fails in many ways inside the unpickler
        raise CheckpointError(f"{path}: not a readable medclassify checkpoint ({first_line(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a medclassify checkpoint (no '{FORMAT}' marker)")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer medclassify (format {data['format_version']}); upgrade to read it")
    return data
