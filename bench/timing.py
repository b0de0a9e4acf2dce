"""What the inference benchmarks share: the timing loop and the description of a benchmark model.

Imports neither torch nor medclassify, so that a process measuring ONNX Runtime alone stays free of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def timed(run: Callable[[np.ndarray], object], batch: np.ndarray, repeats: int, warm_up: int) -> list[float]:
    """Seconds of each of ``repeats`` calls ``run(batch)``, after ``warm_up`` calls that are not
    timed (allocator, thread pool, lazy initialisation)."""
    for _ in range(warm_up):
        run(batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - started)
    return times


def benchmark_metadata(name: str, size: int, channels: int, classes: int) -> dict:
    """The bundle description of a randomly initialised benchmark model."""
    return {
        "model": {"name": name, "in_channels": channels, "num_classes": classes, "image_size": size},
        "preprocessing": {"size": size, "channels": channels, "mean": [0.5] * channels, "std": [0.5] * channels},
        "dataset": {"name": "benchmark", "task": "multi-class", "class_names": [str(k) for k in range(classes)]},
    }
