"""Helpers the tests share: small files in the official MedMNIST ``.npz`` layout and image folders,
an interrupted training run, and a real ``medclassify serve`` process.

The images hold a learnable pattern: class k is a bright square at the k-th cell of a grid, on a
noisy dark background, so a short training run must beat chance.
"""

from __future__ import annotations

import io
import math
import re
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pattern_images(
    labels: np.ndarray, size: int, channels: int, n_classes: int, rng: np.random.Generator
) -> np.ndarray:
    grid = math.ceil(math.sqrt(n_classes))
    cell = size // grid
    images = rng.normal(40, 20, size=(len(labels), size, size, channels))
    for i, label in enumerate(labels):
        row, col = divmod(int(label), grid)
        images[i, row * cell : (row + 1) * cell, col * cell : (col + 1) * cell, :] += 150
    images = np.clip(images, 0, 255).astype(np.uint8)
    return images[..., 0] if channels == 1 else images


def write_medmnist_npz(
    path: Path, size: int = 28, channels: int = 3, n_classes: int = 8, counts=(160, 40, 80), seed: int = 0, **overrides
) -> Path:
    """Write an official-layout file; ``overrides`` replace or (with value None) drop keys."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        labels = np.arange(n) % n_classes
        rng.shuffle(labels)
        arrays[f"{split}_images"] = pattern_images(labels, size, channels, n_classes, rng)
        arrays[f"{split}_labels"] = labels[:, None].astype(np.uint8)
    for key, value in overrides.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def write_image_folder(
    root: Path, splits=("train",), per_class: int = 12, size: int = 40, mode: str = "L", seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, name in enumerate(("NORMAL", "PNEUMONIA")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            images = pattern_images(np.full(per_class, label), size, 1 if mode == "L" else 3, 2, rng)
            for i, array in enumerate(images):
                Image.fromarray(array).convert(mode).save(
                    folder / f"{name.lower()}_{i:03d}.{'png' if i % 2 else 'jpg'}"
                )
    return root


DATASET_SHAPES = {"bloodmnist": (3, 8), "pneumoniamnist": (1, 2), "organcmnist": (1, 11)}


def write_study_files(data: Path, datasets, sizes=(28, 64), counts=(64, 24, 40)) -> Path:
    """Official-layout files for every dataset x size of a test study."""
    for name in datasets:
        channels, n_classes = DATASET_SHAPES[name]
        for size in sizes:
            filename = f"{name}.npz" if size == 28 else f"{name}_{size}.npz"
            write_medmnist_npz(data / filename, size=size, channels=channels, n_classes=n_classes, counts=counts)
    return data


QUADRANT_CLASSES = ["bottom-left", "bottom-right", "none", "top-left", "top-right"]  # folder names, sorted


QUADRANT_OF_CLASS = {"top-left": 0, "top-right": 1, "bottom-left": 2, "bottom-right": 3}


def quadrant_images(class_name: str, n: int, size: int = 28, channels: int = 1, seed: int = 1) -> np.ndarray:
    """Noise, plus for every class but 'none' a bright square filling most of one quadrant. The
    'none' class makes the model look for the square in every class, instead of recognising one
    corner class by the absence of the other three."""
    rng = np.random.default_rng(seed)
    images = rng.normal(40, 20, size=(n, size, size, channels))
    if class_name != "none":
        row, col = divmod(QUADRANT_OF_CLASS[class_name], 2)
        half, margin = size // 2, size // 14
        images[
            :, row * half + margin : (row + 1) * half - margin, col * half + margin : (col + 1) * half - margin, :
        ] += 150
    images = np.clip(images, 0, 255).astype(np.uint8)
    return images[..., 0] if channels == 1 else images


def interrupt_training_at_epoch(monkeypatch, epoch: int):
    """Make the ``epoch``-th epoch of training raise KeyboardInterrupt, as a user's Ctrl-C would.
    Returns the real epoch function, to put back before resuming."""
    from medclassify.training import trainer

    real = trainer.train_one_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", interrupted)
    return real


@contextmanager
def serving(models: list[str], log: Path, *options: str):
    """'medclassify serve MODELS OPTIONS' on a free loopback port, answering /health; yields the
    process and its base URL, and stops it afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "medclassify", "serve", *models, "--port", str(port), *options],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"the server exited: {log.read_text()}")
                time.sleep(0.25)
        else:
            pytest.fail(f"the server did not answer within 60 s: {log.read_text()}")
        yield process, url
    finally:
        process.terminate()
        process.wait(timeout=30)


def plain_cells(html: str) -> str:
    """The report's HTML with each table cell's lines joined, as a reader reads a cell."""
    return re.sub(
        r'<span class="(?:line|word)">([^<]*)</span>(<br>)?', lambda m: m.group(1) + (" " if m.group(2) else ""), html
    )


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``medclassify ARGS`` in this process: its exit code, stdout and stderr."""
    from medclassify.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, message: str) -> None:
    """The command failed as a user's mistake should: exit code 2, one error line holding ``message``, no traceback."""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """An image file's bytes, as an upload carries them."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()
