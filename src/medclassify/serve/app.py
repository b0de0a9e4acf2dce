"""The HTTP service: ``create_app(models, settings)`` returns a FastAPI application.

Routes: ``GET /`` (the web page), ``GET /health``, ``GET /v1/models``, ``POST /v1/predict``,
``GET /metrics`` (Prometheus text). Uploads are recognised by their content, never written under a
name the client chose, and decoded, resized and predicted off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from .. import __version__
from ..data.images import ImageTooLarge, UnsupportedImage, model_input, read_image_bytes
from ..errors import DataError, MedclassifyError
from ..inference.predictor import Predictions
from .models import MicroBatcher, ServedModel
from .schemas import ErrorResponse, Health, ModelInfo, ModelList, PredictResponse

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("medclassify.serve")


@dataclass
class ServeSettings:
    max_upload_mb: float = 10.0  # per file
    max_pixels: int = 50_000_000  # per image (all frames of a DICOM file together)
    max_files: int = 32  # per request
    max_batch: int = 64  # images per forward pass of the micro-batcher

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class Telemetry:
    """Prometheus counters in a registry of the app's own (several apps can live in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("medclassify_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("medclassify_request_seconds", "HTTP request latency", ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.predictions = Counter("medclassify_predictions", "Predicted images per model and class", ["model", "label"], registry=self.registry)


ERRORS = {
    400: {"model": ErrorResponse, "description": "a file is not a readable image, or the model cannot explain"},
    404: {"model": ErrorResponse, "description": "unknown model"},
    413: {"model": ErrorResponse, "description": "a file, the request or an image's pixel count is over the limit"},
    415: {"model": ErrorResponse, "description": "a file is not PNG, JPEG, TIFF, BMP or DICOM (judged by its content)"},
}


UPLOAD_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/bmp", "application/dicom")
# The OpenAPI encoding of the upload: which content each file part may hold (checked by content, not by this header).
UPLOAD_ENCODING = {"requestBody": {"content": {"multipart/form-data": {"encoding": {"files": {"contentType": ", ".join(UPLOAD_TYPES)}}}}}}


def route_family(path: str) -> str:
    """A label for requests outside the API routes that keeps the metrics' label set small."""
    return next((prefix for prefix in ("/static", "/docs", "/openapi.json", "/redoc") if path.startswith(prefix)), "other")


def create_app(models: dict[str, ServedModel], settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    telemetry = Telemetry()

    batchers = {name: MicroBatcher(served.predictor.predict_pixels, settings.max_batch) for name, served in models.items()}
    explain_locks = {name: asyncio.Lock() for name in models}  # Grad-CAM hooks the model: one request at a time

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for batcher in batchers.values():
            batcher.stop()

    app = FastAPI(
        title="medclassify",
        version=__version__,
        description="Classify medical images with models trained by medclassify, and see where the network looked "
                    "(Grad-CAM). A research tool, not a diagnosis.",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def observe(request: Request, call_next):
        """One JSON log line and the Prometheus figures per request."""
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(request.scope.get("route"), "path", None) or route_family(request.url.path)
            telemetry.requests.labels(route, request.method, str(status)).inc()
            telemetry.latency.labels(route).observe(elapsed)
            log.info(json.dumps({"route": route, "method": request.method, "status": status, "latency_ms": round(elapsed * 1000, 2),
                                 "model": getattr(request.state, "model", None)}))

    def pick(name: str | None) -> ServedModel:
        if name is None:
            return next(iter(models.values()))
        if name not in models:
            raise HTTPException(404, f"unknown model '{name}'; loaded: {', '.join(models)}")
        return models[name]

    @app.get("/health", response_model=Health, tags=["service"])
    async def health() -> Health:
        """Liveness: answers while predictions run."""
        return Health(status="ok", models=len(models))

    @app.get("/v1/models", response_model=ModelList, tags=["models"])
    async def list_models() -> ModelList:
        """The loaded models with their classes, input size, task and test metrics."""
        return ModelList(models=[ModelInfo(**served.info()) for served in models.values()])

    async def read_upload(upload: UploadFile, index: int) -> list:
        name = PurePath(upload.filename or f"file{index}").name[:200] or f"file{index}"
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, f"{name}: larger than the upload limit of {settings.max_upload_mb:g} MB")
        try:
            return await asyncio.to_thread(read_image_bytes, data, name, settings.max_pixels)
        except UnsupportedImage as exc:
            raise HTTPException(415, str(exc)) from None
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except DataError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS, tags=["models"],
              max_body_size=settings.max_upload_bytes * settings.max_files + (1 << 20), openapi_extra=UPLOAD_ENCODING)
    async def predict(
        request: Request,
        files: Annotated[list[UploadFile], File(description="one or more PNG, JPEG, TIFF, BMP or DICOM files", min_length=1)],
        model: Annotated[str | None, Query(description="a name from /v1/models (default: the first model)")] = None,
        explain: Annotated[bool, Query(description="add the Grad-CAM overlay of the predicted class")] = False,
        top: Annotated[int, Query(ge=1, le=100, description="classes listed in 'top'")] = 3,
    ) -> PredictResponse:
        """Class probabilities for each uploaded image (every frame of a multi-frame DICOM)."""
        served = pick(model)
        request.state.model = served.name
        if len(files) > settings.max_files:
            raise HTTPException(413, f"{len(files)} files in one request; the limit is {settings.max_files}")
        sources = [source for i, upload in enumerate(files) for source in await read_upload(upload, i)]
        predictor = served.predictor
        pixels = await asyncio.to_thread(model_input, sources, predictor.size, predictor.channels)
        probabilities = await batchers[served.name].submit(pixels)
        predictions = Predictions([s.name for s in sources], probabilities, predictor.class_names, predictor.multi_label)
        heatmaps = [None] * len(sources)
        if explain:
            async with explain_locks[served.name]:
                try:
                    heatmaps = await asyncio.to_thread(served.heatmaps, sources, pixels, [int(k) for k in probabilities.argmax(axis=1)])
                except MedclassifyError as exc:
                    raise HTTPException(400, str(exc)) from None
        for i in range(len(predictions)):
            telemetry.predictions.labels(served.name, predictions.predicted(i)).inc()
        records = predictions.records(top)
        for record, heatmap in zip(records, heatmaps):
            record["filename"] = record.pop("file")
            record["top"] = [{"label": t["class"], "probability": t["probability"]} for t in record["top"]]
            record["heatmap"] = heatmap
        return PredictResponse(model=served.name, version=served.version, predictions=records)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"],
             responses={200: {"content": {"text/plain": {"example": "medclassify_requests_total{...} 12.0"}}}})
    async def metrics() -> PlainTextResponse:
        """Prometheus text format: requests, latency histogram, predictions per class."""
        return PlainTextResponse(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
