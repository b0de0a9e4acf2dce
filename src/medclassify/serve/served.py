"""The models a server holds: each a :class:`Predictor` behind a micro-batching queue, with a
PyTorch twin for Grad-CAM loaded on first use."""

from __future__ import annotations

import asyncio
import base64
import io
import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.images import SourceImage
from ..defaults import DEFAULT_EXPLAIN_METHOD, AttributionMethod
from ..errors import CheckpointError, ConfigError
from ..explain.gradcam import cam_maps, overlay_pixels, resize_map
from ..inference.predictor import Predictor
from ..io import file_md5
from ..runs.files import BEST_FILE


class MicroBatcher:
    """Requests queue up; one worker thread takes everything queued (up to ``max_batch`` images),
    runs the model on it, and hands each request its rows. While the model runs, new requests
    gather for the next batch, so batches grow with the load and add no waiting when idle. Requests
    await a thread-safe future, so the event loop stays free (``/health`` answers meanwhile) and the
    batcher works with whichever loop serves the request."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch: int):
        self.run = run
        self.max_batch = max_batch
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.worker = threading.Thread(target=self._work, name="medclassify-batcher", daemon=True)
        self.worker.start()

    def stop(self) -> None:
        self.queue.put(None)
        self.worker.join()

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        future: Future = Future()
        self.queue.put((pixels, future))
        return await asyncio.wrap_future(future)

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            items, count = [item], len(item[0])
            while count < self.max_batch and not self.queue.empty():
                if (item := self.queue.get()) is None:
                    self.queue.put(None)  # stop after this batch
                    break
                items.append(item)
                count += len(item[0])
            try:
                results = self.run(np.concatenate([pixels for pixels, _ in items]))
            except Exception as exc:  # handed to every waiting request, which reports it
                for _, future in items:
                    future.set_exception(exc)
                continue
            offset = 0
            for pixels, future in items:
                future.set_result(results[offset : offset + len(pixels)])
                offset += len(pixels)


@dataclass
class ServedModel:
    """A model the server offers: its predictor, where it came from and its version."""

    name: str
    path: Path
    predictor: Predictor
    version: str
    explainer: Predictor | None = None  # PyTorch predictor for Grad-CAM, loaded on first use

    @property
    def can_explain(self) -> bool:
        return self.path.suffix.lower() not in (".onnx", ".pte")  # exported files hold no gradients

    def info(self) -> dict:
        metadata = self.predictor.metadata
        return {
            "name": self.name,
            "version": self.version,
            "architecture": metadata["model"]["name"],
            "dataset": metadata["dataset"]["name"],
            "task": self.predictor.task,
            "classes": self.predictor.class_names,
            "image_size": self.predictor.size,
            "channels": self.predictor.channels,
            "backend": self.predictor.backend.name,
            "explain": self.can_explain,
            "test_metrics": metadata.get("test_metrics"),
            "medclassify_version": metadata.get("medclassify_version"),
        }

    def explain_predictor(self) -> Predictor:
        """The PyTorch predictor the explanations need; an exported file is a :class:`ConfigError`."""
        if not self.can_explain:
            raise ConfigError(
                f"model '{self.name}' is an exported file without PyTorch weights; explanations need the run folder or its best.pt"
            )
        if self.explainer is None:
            torch_backed = self.predictor.backend.name == "pytorch"
            self.explainer = (
                self.predictor if torch_backed else Predictor.from_run(self.path, device="cpu", backend="torch")
            )
        return self.explainer

    def heatmaps(
        self,
        sources: list[SourceImage],
        pixels: np.ndarray,
        classes: list[int],
        method: AttributionMethod = DEFAULT_EXPLAIN_METHOD,
    ) -> list[str]:
        """Overlays of ``method`` (LayerCAM by default) for the given classes as PNG data URLs, from
        the sources and their model input ``pixels`` (the bundle's size and channels; runs in a
        worker thread)."""
        predictor = self.explain_predictor()
        maps = cam_maps(predictor, predictor.normalise(pixels), classes, method=method)
        urls = []
        for source, heatmap in zip(sources, maps):
            height, width = source.pixels.shape[:2]
            urls.append(png_data_url(overlay_pixels(source.pixels, resize_map(heatmap, height, width))))
        return urls


def png_data_url(pixels: np.ndarray) -> str:
    """A uint8 image as a ``data:image/png;base64`` URL for the web page."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def model_version(path: Path, metadata: Mapping[str, object]) -> str:
    """The first 12 hex digits of the weights' MD5: an export (ONNX, int8, ExecuTorch) shares its
    best.pt's version, which its metadata records."""
    if path.is_dir():
        path = path / BEST_FILE
    return str(metadata.get("checkpoint_md5") or file_md5(path))[:12]


def load_served_models(specs: list[str], device: str = "auto") -> dict[str, ServedModel]:
    """``PATH`` or ``NAME=PATH`` per model; the name defaults to the run folder's or file's name."""
    models: dict[str, ServedModel] = {}
    for spec in specs:
        name, _, location = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = Path(location)
        predictor = Predictor.from_run(path, device=device)
        source = path if path.is_dir() else predictor.source
        name = name or (path.name if path.is_dir() else path.stem)
        if name in models:
            raise CheckpointError(f"two models are named '{name}'; name them with NAME=PATH")
        models[name] = ServedModel(name, path, predictor, model_version(source, predictor.metadata))
    return models
