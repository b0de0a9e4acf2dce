"""The synthetic sample that ships with medclassify (``synthcells``).

No real medical image may be distributed with the package, so the offline demo and the tests use
cell-like RGB images drawn deterministically from a seed: a pink smear background with one cell
whose class decides its shape, size and colour (with jitter and noise, so the task is learnable
but not trivial). The file is written in the official MedMNIST ``.npz`` layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path
from .catalog import SYNTHCELLS

SEED = 20240601
BACKGROUND = np.array([228.0, 196.0, 208.0])
# class -> (base colour RGB, radius range as a fraction of the image side)
CELL_COLOURS = {
    0: np.array([92.0, 40.0, 122.0]),  # small dark cell
    1: np.array([172.0, 134.0, 194.0]),  # large pale cell
    2: np.array([110.0, 52.0, 140.0]),  # bilobed cell
    3: np.array([122.0, 62.0, 150.0]),  # ring cell
}


def _disk(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float, side: int) -> np.ndarray:
    """Anti-aliased disk coverage in [0, 1]."""
    distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return np.clip((radius - distance) * side + 0.5, 0.0, 1.0)


def _draw(label: int, grid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    yy, xx = grid
    side = yy.shape[0]
    cy, cx = 0.5 + rng.uniform(-0.1, 0.1, size=2)
    if label == 0:
        mask = _disk(yy, xx, cy, cx, rng.uniform(0.12, 0.22), side)
    elif label == 1:
        mask = _disk(yy, xx, cy, cx, rng.uniform(0.19, 0.34), side)
    elif label == 2:
        angle, offset, radius = rng.uniform(0, np.pi), rng.uniform(0.10, 0.15), rng.uniform(0.12, 0.17)
        dy, dx = offset * np.sin(angle), offset * np.cos(angle)
        mask = np.maximum(_disk(yy, xx, cy + dy, cx + dx, radius, side), _disk(yy, xx, cy - dy, cx - dx, radius, side))
    else:
        outer = rng.uniform(0.22, 0.32)
        mask = _disk(yy, xx, cy, cx, outer, side) - _disk(yy, xx, cy, cx, outer - rng.uniform(0.05, 0.12), side)
    colour = CELL_COLOURS[label] + rng.normal(0.0, 30.0, size=3)
    background = BACKGROUND + rng.normal(0.0, 10.0, size=3)
    image = background * (1 - mask[..., None]) + colour * mask[..., None]
    image += rng.normal(0.0, 40.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def generate_synthcells(size: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """All three splits as arrays in the MedMNIST layout (images N x H x W x 3, labels N x 1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    n_classes = len(SYNTHCELLS.class_names)
    grid = np.mgrid[0:size, 0:size] / size
    for split, total in SYNTHCELLS.n_samples.items():
        labels = np.repeat(np.arange(n_classes), total // n_classes)
        rng.shuffle(labels)
        arrays[f"{split}_images"] = np.stack([_draw(int(label), grid, rng) for label in labels])
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)
    return arrays


def ensure_synthcells(data_dir: Path, size: int) -> Path:
    """Write ``synthcells[_SIZE].npz`` into ``data_dir`` unless it is already there."""
    path = Path(data_dir) / SYNTHCELLS.filename(size)
    if not path.is_file():
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, allow_pickle=False, **generate_synthcells(size))
    return path
