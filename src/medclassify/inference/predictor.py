"""Apply a trained model to new images: ``Predictor.from_run(path).predict(images)``.

``path`` is a run folder, a checkpoint bundle (``best.pt``), an exported ONNX model or an ExecuTorch
program (``.pte``). Every backend takes the same normalised float32 batches and returns logits;
probabilities are computed here with NumPy, so PyTorch, ONNX Runtime and ExecuTorch answers differ
only by the models' own rounding. torch is imported only for PyTorch bundles and ExecuTorch: an
ONNX model predicts without it, which is what makes the command start in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, get_args

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import (
    NonFinitePixels,
    SourceImage,
    array_images,
    image_files,
    model_input,
    normalise_pixels,
    pil_to_rgb,
    read_image_file,
)
from ..defaults import PREDICT_BATCH_SIZE
from ..errors import CheckpointError, ConfigError, DataError, first_line
from ..evaluation.conformal import prediction_sets
from ..runs.files import BEST_FILE, ONNX_FILE, PTE_FILE, BundleMetadata
from ..tasks import Task, probabilities_from_logits
from .bundle import bundle_description, check_bundle, current_export, parse_onnx_metadata, recorded_export
from .hub_folder import is_hub_folder, load_hub_folder

if TYPE_CHECKING:
    import torch  # imported only for PyTorch bundles

THRESHOLD = 0.5
PredictBackend = Literal["auto", "torch", "onnx", "executorch"]
PREDICT_BACKENDS: tuple[PredictBackend, ...] = get_args(PredictBackend)


class Backend(Protocol):
    """What computes a model's logits: the normalised float32 batch N x C x H x W in, N x classes out."""

    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxBackend:
    """Logits from an exported ONNX model through ONNX Runtime (no torch import)."""

    name = "onnxruntime"

    def __init__(self, path: Path):
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for every kind of bad file
            raise CheckpointError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = parse_onnx_metadata(self.session.get_modelmeta().custom_metadata_map, path)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


PTE_METADATA_METHOD = "medclassify_metadata"  # an ExecuTorch program's constant method holding the bundle description


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """ExecuTorch's C++ runtime prints CPU-probing notes on file descriptor 2 when it starts; what
    goes wrong is raised as an exception, so the notes are dropped."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def quiet_executorch_import() -> Iterator[None]:
    """Importing ExecuTorch (through torchao) logs a deprecation note of torch's pytree registry on
    every start; a user of medclassify cannot act on it."""
    import logging

    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class ExecuTorchBackend:
    """Logits from an ExecuTorch program (``.pte``) through ExecuTorch's runtime, one image at a time
    (the program is exported for batch 1, as a device runs it)."""

    name = "executorch"

    def __init__(self, path: Path):
        try:
            with quiet_executorch_import():
                from executorch.runtime import Runtime
        except ImportError:
            raise CheckpointError(
                f"{path}: an ExecuTorch program needs the executorch package: pip install 'medclassify[edge]'"
            ) from None
        try:
            with _native_stderr_silenced():
                program = Runtime.get().load_program(path)
                if PTE_METADATA_METHOD not in program.method_names:
                    raise CheckpointError(
                        f"{path}: an ExecuTorch program without medclassify metadata; "
                        "export it with 'medclassify export RUN --format executorch'"
                    )
                description = program.load_method(PTE_METADATA_METHOD).execute([])[0]
                self.forward = program.load_method("forward")
        except CheckpointError:
            raise
        except Exception as exc:  # the runtime raises RuntimeError or ValueError for a damaged program
            raise CheckpointError(f"{path}: not a readable ExecuTorch program ({first_line(exc)})") from None
        try:
            self.metadata = json.loads(bytes(description.numpy()).decode())
        except ValueError as exc:
            raise CheckpointError(f"{path}: its medclassify metadata is not valid JSON ({first_line(exc)})") from None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        images = torch.from_numpy(np.ascontiguousarray(batch))
        return np.concatenate([self.forward.execute([images[i : i + 1]])[0].numpy() for i in range(len(batch))])


@dataclass
class Predictions:
    """Class probabilities (N x classes) for the images that could be read, and the ones skipped."""

    sources: list[str]
    probabilities: np.ndarray
    class_names: list[str]
    multi_label: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    operating_point: dict | None = None  # the bundle's threshold for one class, chosen on validation
    conformal: dict | None = None  # the bundle's conformal thresholds, calibrated on validation

    def decision(self, i: int) -> str | None:
        """At the bundle's operating point: the positive class when its probability reaches the
        threshold, else 'not CLASS'; None without an operating point."""
        if self.operating_point is None:
            return None
        positive = self.operating_point["positive_class"]
        reached = self.probabilities[i, self.class_names.index(positive)] >= self.operating_point["threshold"]
        return positive if reached else f"not {positive}"

    def prediction_set(self, i: int) -> list[str] | None:
        """The classes of image ``i``'s conformal prediction set, most probable first (None without
        conformal calibration): it holds the true class with probability ``1 - alpha`` for images
        like the calibration images."""
        if self.conformal is None:
            return None
        members = prediction_sets(self.probabilities[i : i + 1], self.conformal)[0]
        order = np.argsort(-self.probabilities[i], kind="stable")
        return [self.class_names[k] for k in order if members[k]]

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def labels(self) -> np.ndarray:
        """Predicted class index per image (multi-label: a 0/1 row per image, threshold 0.5)."""
        if self.multi_label:
            return (self.probabilities > THRESHOLD).astype(int)
        return self.probabilities.argmax(axis=1)

    def predicted(self, i: int) -> str:
        """Image ``i``'s predicted class name (multi-label: every label over the threshold, joined by '; ')."""
        if self.multi_label:
            names = [self.class_names[k] for k in np.flatnonzero(self.probabilities[i] > THRESHOLD)]
            return "; ".join(names) or "(none)"
        return self.class_names[int(self.probabilities[i].argmax())]

    def top(self, i: int, k: int = 3) -> list[tuple[str, float]]:
        """Image ``i``'s ``k`` most probable classes with their probabilities, most probable first."""
        order = np.argsort(-self.probabilities[i], kind="stable")[:k]
        return [(self.class_names[j], float(self.probabilities[i, j])) for j in order]

    def records(self, k: int = 3) -> list[dict]:
        """One JSON-ready dict per image: file, prediction, its probability, the top k, every class,
        the decision at the bundle's operating point and the conformal prediction set with its level
        (None without them)."""
        return [
            {
                "file": source,
                "prediction": self.predicted(i),
                "probability": float(self.probabilities[i].max()),
                "top": [{"class": name, "probability": p} for name, p in self.top(i, k)],
                "probabilities": dict(zip(self.class_names, map(float, self.probabilities[i]))),
                "decision": self.decision(i),
                "prediction_set": None
                if self.conformal is None
                else {"level": 1 - self.conformal["alpha"], "classes": self.prediction_set(i)},
            }
            for i, source in enumerate(self.sources)
        ]


class Predictor:
    """A trained model with the preprocessing it was trained with."""

    def __init__(self, metadata: object, backend: Backend, source: Path, calibrated: bool = True):
        self.metadata: BundleMetadata = check_bundle(metadata, source)
        self.backend = backend
        self.source = source
        metadata = self.metadata
        prep = metadata["preprocessing"]
        self.size = int(prep["size"])
        self.channels = int(prep["channels"])
        self.mean = np.asarray(prep["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(prep["std"], dtype=np.float32).reshape(1, -1, 1, 1)
        self.class_names: list[str] = list(metadata["dataset"]["class_names"])
        self.task: str = metadata["dataset"]["task"]
        self.multi_label = self.task == Task.MULTI_LABEL
        # temperature scaling stored in the bundle; an exported graph holds it already
        calibration = metadata.get("calibration") or {}
        in_graph = metadata.get("temperature_in_graph", False)
        self.temperature = float(calibration.get("temperature", 1.0)) if calibrated and not in_graph else 1.0
        self.operating_point: dict | None = metadata.get("operating_point") if calibrated else None
        # conformal thresholds hold for the temperature-scaled probabilities they were calibrated on
        self.conformal: dict | None = metadata.get("conformal") if calibrated else None

    @classmethod
    def from_run(
        cls, path: str | Path, device: str = "auto", backend: PredictBackend = "auto", calibrated: bool = True
    ) -> Predictor:
        """The model of a run folder, a bundle, an exported ONNX model or a Hub folder, ready to predict.

        Args:
            path: a run folder (its ``best.pt``; with ``backend="auto"`` its ``model.onnx`` when that
                was exported from the current ``best.pt``), a ``.pt`` bundle, an ``.onnx`` export (int8
                too), an ExecuTorch ``.pte`` program or a Hub folder (``export --format hub``). A run's
                own export is checked against the MD5 ``exports.json`` recorded for it.
            device: where a PyTorch model runs: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
            backend: ``auto``, ``torch`` (PyTorch), ``onnx`` (ONNX Runtime, without importing torch) or
                ``executorch`` (ExecuTorch's runtime; for a run folder, its ``model.pte``).
            calibrated: apply the bundle's temperature, operating point and conformal sets; False
                ignores them (PyTorch bundles; an ONNX graph holds its temperature).

        Returns:
            The predictor, with the preprocessing the model was trained with.
        """
        if backend not in PREDICT_BACKENDS:
            raise ConfigError(
                f"backend {backend!r}: expected one of {', '.join(PREDICT_BACKENDS)}", parameters=("backend",)
            )
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{path}: no such run folder or model file")
        file_backends = {".onnx": "onnx", ".pte": "executorch"}
        if path.suffix.lower() in file_backends:
            needed = file_backends[path.suffix.lower()]
            if backend not in ("auto", needed):
                raise CheckpointError(
                    f"{path}: {'an ONNX model' if needed == 'onnx' else 'an ExecuTorch program'} runs with "
                    f"backend {needed} or auto, not {backend}",
                    parameters=("backend",),
                )
            if recorded_export(path.parent, path.name) is not None:  # a run's own export: checked as model.onnx is
                path = current_export(path.parent, path.parent / BEST_FILE, path.name)
            return cls._exported(path)
        checkpoint = path / BEST_FILE if path.is_dir() else path
        if path.is_dir() and not checkpoint.is_file() and is_hub_folder(path):
            if backend not in ("auto", "torch"):
                raise CheckpointError(
                    f"{path}: a Hub folder runs with backend torch or auto, not {backend}", parameters=("backend",)
                )
            source, state = path, load_hub_folder(path)
        else:
            if path.is_dir():
                if not checkpoint.is_file():
                    raise CheckpointError(f"{path}: no best.pt; not a finished medclassify run folder")
                if backend == "executorch":
                    return cls._exported(current_export(path, checkpoint, PTE_FILE))
                if backend == "onnx" or (backend == "auto" and (path / ONNX_FILE).is_file()):
                    try:
                        return cls._exported(current_export(path, checkpoint))
                    except CheckpointError as exc:
                        if backend == "onnx":
                            raise
                        warnings.warn(f"{exc} (using best.pt with PyTorch meanwhile)", stacklevel=2)
            elif backend in ("onnx", "executorch"):
                raise CheckpointError(
                    f"{path}: a PyTorch bundle; export its run folder first ('medclassify export RUN"
                    f"{'' if backend == 'onnx' else ' --format executorch'}')",
                    parameters=("backend",),
                )
            from ..runs import load_checkpoint

            source, state = checkpoint, load_checkpoint(checkpoint)
        from ..runs import TorchBackend  # torch only here: an ONNX model returned above without it

        metadata = check_bundle(bundle_description(state), source)  # before the model is built from it
        return cls(metadata, TorchBackend(state, source, device), source, calibrated)

    @classmethod
    def _exported(cls, path: Path) -> Predictor:
        backend: OnnxBackend | ExecuTorchBackend = (
            ExecuTorchBackend(path) if path.suffix.lower() == ".pte" else OnnxBackend(path)
        )
        return cls(backend.metadata, backend, path)

    @property
    def model(self) -> torch.nn.Module:
        """The ``torch.nn.Module`` (PyTorch bundles only; Grad-CAM needs it)."""
        model = getattr(self.backend, "model", None)
        if model is None:
            raise CheckpointError(
                f"{self.source}: an exported model has no gradients; use the run folder or its best.pt"
            )
        return model

    # ---- images -> model input ---------------------------------------------------------------
    def read(self, images: object, first_index: int = 0) -> tuple[list[SourceImage], list[tuple[str, str]]]:
        """Files, folders, PIL images or arrays -> source images, and the items that could not be
        read; in-memory images are named by their position, counted from ``first_index``."""
        sources, skipped = [], []
        for i, item in enumerate(_expand(images), start=first_index):
            try:
                sources += self._read_one(item, i)
            except DataError as exc:
                skipped.append((str(item) if isinstance(item, (str, Path)) else f"item {i}", str(exc)))
            except NonFinitePixels as exc:
                skipped.append((f"item {i}", f"image[{i}]: {exc}"))
        return sources, skipped

    @staticmethod
    def _read_one(item: object, index: int) -> list[SourceImage]:
        if isinstance(item, SourceImage):
            return [item]
        if isinstance(item, Image.Image):
            rgb, grey = pil_to_rgb(item)
            return [SourceImage(f"image[{index}]", np.asarray(rgb, dtype=np.uint8), grey)]
        if isinstance(item, np.ndarray):
            return array_images(f"array[{index}]", item)
        if isinstance(item, (str, Path)):
            return read_image_file(item)
        raise DataError(f"{item!r}: expected a file path, a PIL image or a NumPy array")

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 N x C x H x W at the model's size -> the model's float32 input."""
        return normalise_pixels(pixels, self.mean, self.std)

    # ---- prediction --------------------------------------------------------------------------
    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's logits for a normalised float32 N x C x size x size batch."""
        return self.backend(batch)

    def logits_of_pixels(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The model's logits (before any temperature) for uint8 N x C x size x size images."""
        chunks = [self.logits(self.normalise(pixels[i : i + batch_size])) for i in range(0, len(pixels), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.class_names)), dtype=np.float32)

    def predict_pixels(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Probabilities for images already at the model's size and channels (e.g. a MedMNIST split).

        Args:
            pixels: uint8 images, N x C x size x size.
            batch_size: images per forward pass.

        Returns:
            N x classes probabilities, after the bundle's temperature.
        """
        return probabilities_from_logits(self.logits_of_pixels(pixels, batch_size) / self.temperature, self.multi_label)

    def predict(self, images: object, batch_size: int = PREDICT_BATCH_SIZE, progress: bool = False) -> Predictions:
        """Class probabilities for images, each converted as the training images were.

        Args:
            images: a file, folder (every image file in it), PIL image or NumPy array, or a list of them.
            batch_size: images per forward pass.
            progress: show a progress bar over the files.

        Returns:
            The probabilities of the images that could be read, with the bundle's decision and
            prediction sets; unreadable files are listed in ``Predictions.skipped``.
        """
        items = _expand(images)
        names, probs, skipped = [], [], []
        with tqdm(
            total=len(items), unit="file", disable=None if progress and len(items) > 1 else True, leave=False
        ) as bar:
            for start in range(0, len(items), batch_size):
                sources, failed = self.read(items[start : start + batch_size], first_index=start)
                skipped += failed
                if sources:
                    probs.append(self.predict_pixels(model_input(sources, self.size, self.channels), batch_size))
                    names += [s.name for s in sources]
                bar.update(len(items[start : start + batch_size]))
        probabilities = np.concatenate(probs) if probs else np.zeros((0, len(self.class_names)))
        return Predictions(
            names, probabilities, self.class_names, self.multi_label, skipped, self.operating_point, self.conformal
        )

    def describe(self) -> str:
        """One line naming the model, its dataset, input and backend (for logs and the server's start).

        Returns:
            e.g. ``paper-cnn on bloodmnist (28 px, 3 channel(s), 8 classes), onnx from runs/blood28/model.onnx``.
        """
        spec, data = self.metadata["model"], self.metadata["dataset"]
        calibration = self.metadata.get("calibration") or {}
        scaled = f", temperature {calibration['temperature']:.3g}" if "temperature" in calibration else ""
        return (
            f"{spec['name']} on {data['name']} ({self.size} px, {self.channels} channel(s), {len(self.class_names)} classes{scaled}), "
            f"{self.backend.name} from {self.source}"
        )


def _expand(images: object) -> list:
    """One item or many; folders replaced by the image files under them."""
    single = isinstance(images, (str, Path, np.ndarray, Image.Image, SourceImage))
    items = [images] if single or not isinstance(images, Iterable) else list(images)
    return [file for item in items for file in (image_files([item]) if isinstance(item, (str, Path)) else [item])]
