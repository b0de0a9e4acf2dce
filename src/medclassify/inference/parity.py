"""Does an exported model compute what the PyTorch model computes? Both are run over the run's test
images (or seeded random images when those are not at hand) and their largest logit difference is
compared with a tolerance."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..runs.files import RunDir
from .predictor import Predictor

RANDOM_PARITY_IMAGES = 64
LogitFunction = Callable[[np.ndarray], np.ndarray]


def parity_pixels(run_dir: Path | None, predictor: Predictor, data_dir: str | None) -> tuple[np.ndarray, str]:
    """uint8 test images of the run, or seeded random images when the run's data are not at hand."""
    if run_dir is not None and RunDir(run_dir).config_path.is_file():
        from ..runs import load_run_data

        config = RunDir(run_dir).config(data_dir)
        try:
            return load_run_data(config).splits["test"].images.numpy(), "test split"
        except DataError as exc:
            warnings.warn(f"parity checked on random images: the run's test data are not at hand ({exc})", stacklevel=2)
    shape = (RANDOM_PARITY_IMAGES, predictor.channels, predictor.size, predictor.size)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8), "random images"


def max_logit_difference(
    reference: LogitFunction,
    candidate: LogitFunction,
    pixels: np.ndarray,
    normalise: LogitFunction,
    batch_size: int = 256,
) -> float:
    """The largest absolute logit difference between two models over ``pixels`` (uint8 N x C x H x W)."""
    worst = 0.0
    for start in range(0, len(pixels), batch_size):
        batch = normalise(pixels[start : start + batch_size])
        worst = max(worst, float(np.abs(reference(batch) - candidate(batch)).max()))
    return worst
