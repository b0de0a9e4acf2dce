"""Reading a Hugging Face Hub model folder that ``medclassify export --format hub`` wrote
(``save_pretrained``'s layout): the predictor loads it without the writing side's imports."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from ..errors import CheckpointError, ConfigError, first_line

HUB_FORMAT = "medclassify.hub"
HUB_FORMAT_VERSION = 1
HUB_CONFIG = "config.json"
HUB_WEIGHTS = "model.safetensors"
HUB_PREPROCESSOR = "preprocessor_config.json"
HUB_CARD = "README.md"
HUB_FOLDER = "hub"  # default folder inside the run
INSTALL_HUB = "pip install 'medclassify[hub]'"


def safetensors_module() -> ModuleType:
    try:
        import safetensors.torch
    except ImportError:
        raise ConfigError(f"the Hub format needs safetensors: {INSTALL_HUB}") from None
    return safetensors.torch


HUB_FILES = (HUB_CONFIG, HUB_WEIGHTS, HUB_PREPROCESSOR, HUB_CARD)  # what an export writes, and all it replaces


def is_hub_folder(path: Path) -> bool:
    """A folder written by :func:`export_hub`: its ``config.json`` carries medclassify's format marker
    (a Hugging Face model folder of another kind has the same file names)."""
    if not (path.is_dir() and (path / HUB_WEIGHTS).is_file() and (path / HUB_CONFIG).is_file()):
        return False
    try:
        description = json.loads((path / HUB_CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(description, dict) and description.get("format") == HUB_FORMAT


def load_hub_folder(path: Path) -> dict:
    """The bundle a Hub folder holds (its description and weights), as ``best.pt`` would give it."""
    try:
        description = json.loads((path / HUB_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / HUB_CONFIG}: not readable ({first_line(exc)})") from None
    if not isinstance(description, dict) or description.get("format") != HUB_FORMAT:
        raise CheckpointError(f"{path / HUB_CONFIG}: not a medclassify Hub folder (no '{HUB_FORMAT}' format)")
    if description.get("format_version", 0) > HUB_FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer medclassify; upgrade to read it")
    try:
        weights = safetensors_module().load_file(path / HUB_WEIGHTS, device="cpu")
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path / HUB_WEIGHTS}: not readable weights ({first_line(exc)})") from None
    state = {k: v for k, v in description.items() if k not in ("format", "format_version")}
    return {**state, "model_state": weights}
