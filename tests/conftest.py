"""Fixtures: data folders in the official MedMNIST ``.npz`` layout, and runs trained once per
session (the tests that share one only read it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import QUADRANT_CLASSES, quadrant_images, write_medmnist_npz


@pytest.fixture(scope="session", autouse=True)
def user_cache_folder(tmp_path_factory):
    """The user's cache folder (where split caches and the demo's sample go by default) is a
    temporary one: no test writes into the home folder of whoever runs the suite."""
    saved = {name: os.environ.get(name) for name in ("XDG_CACHE_HOME", "MEDCLASSIFY_CACHE")}
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("user-cache"))
    os.environ.pop("MEDCLASSIFY_CACHE", None)
    yield Path(os.environ["XDG_CACHE_HOME"])
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def blood_dir(tmp_path: Path) -> Path:
    """bloodmnist.npz (28 px, RGB, 8 classes) and bloodmnist_64.npz in a data folder."""
    write_medmnist_npz(tmp_path / "data" / "bloodmnist.npz")
    write_medmnist_npz(tmp_path / "data" / "bloodmnist_64.npz", size=64, counts=(96, 32, 48))
    return tmp_path / "data"


@pytest.fixture
def pneumonia_dir(tmp_path: Path) -> Path:
    """pneumoniamnist.npz: 28 px grey, binary."""
    write_medmnist_npz(tmp_path / "data" / "pneumoniamnist.npz", channels=1, n_classes=2, counts=(120, 30, 60))
    return tmp_path / "data"


SHARED_RUNS = ("quadrant_run", "exported_run", "blood_run")  # trained once, read by many tests


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(autouse=True)
def shared_runs_stay_unchanged(request):
    """A test that uses a session's shared run fails if it changed a file of it: a test that writes
    (evaluate, calibrate, export into the run) works on a copy, so that no other test sees its result."""
    folders = []
    for name in SHARED_RUNS:
        if name in request.fixturenames:
            value = request.getfixturevalue(name)
            folders.append(Path(getattr(value, "run_dir", value)))
    before = [_listing(folder) for folder in folders]
    yield
    changed = [str(folder) for folder, listed in zip(folders, before) if _listing(folder) != listed]
    assert not changed, f"the test changed the shared run(s) {', '.join(changed)}; give it a copy (shutil.copytree)"


@pytest.fixture(scope="session")
def quadrant_run(tmp_path_factory) -> Path:
    """A grey paper-cnn trained on the quadrant task (an image folder of PNGs): the class is the
    quadrant holding a bright square (or 'none')."""
    from medclassify.config import TrainConfig
    from medclassify.training import train

    root = tmp_path_factory.mktemp("quadrants")
    for k, name in enumerate(QUADRANT_CLASSES):
        folder = root / "data" / "train" / name
        folder.mkdir(parents=True)
        for i, array in enumerate(quadrant_images(name, 50, seed=k)):
            Image.fromarray(array).save(folder / f"{i:03d}.png")
    result = train(
        TrainConfig(
            dataset="folder",
            data_dir=str(root / "data"),
            size=28,
            channels=1,
            epochs=6,
            out=str(root / "run"),
            quiet=True,
            num_threads=2,
        )
    )
    return result.run_dir


@pytest.fixture(scope="session")
def exported_run(quadrant_run, tmp_path_factory) -> Path:
    """A copy of the quadrant run with its model.onnx."""
    import shutil

    from medclassify.inference import export_model

    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(quadrant_run, run)
    export_model(run)
    return run


@pytest.fixture(scope="session")
def blood_run(tmp_path_factory):
    """A 3-epoch paper-cnn on the bloodmnist fixture (seed 1), trained once; read-only for its tests."""
    from medclassify.config import TrainConfig
    from medclassify.training import train

    root = tmp_path_factory.mktemp("blood")
    write_medmnist_npz(root / "data" / "bloodmnist.npz")
    write_medmnist_npz(root / "data" / "bloodmnist_64.npz", size=64, counts=(96, 32, 48))
    return train(
        TrainConfig(
            dataset="bloodmnist",
            size=28,
            data_dir=str(root / "data"),
            out=str(root / "run"),
            epochs=3,
            verify=False,
            quiet=True,
            seed=1,
        )
    )


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    """The documentation site, built once with ``mkdocs build --strict`` (fails the tests that use it
    on any warning)."""
    site = tmp_path_factory.mktemp("site") / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return site


def pytest_configure(config) -> None:
    """Under pytest-xdist each worker gets its share of the cores for PyTorch, and so do the
    commands it starts (through ``OMP_NUM_THREADS``, unless the caller set it): with one worker per
    core, workers of several threads each wait on each other's threads and the suite runs slower."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_xdist_auto_num_workers(config) -> int:
    """'-n auto' (the default in pyproject.toml): one worker per core, at most four, since each
    worker trains the session's shared runs again; on more cores, each worker's PyTorch takes its
    share of them (:func:`pytest_configure`)."""
    return max(1, min(os.cpu_count() or 1, 4))
