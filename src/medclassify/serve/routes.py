"""The service's routes: ``GET /``, ``GET /health``, ``GET /v1/models``, ``POST /v1/predict`` and
``GET /metrics``. Each reads the application's :class:`Service` (its models, limits, batchers and
counters) through FastAPI's dependency injection; :func:`.app.create_app` builds it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, PlainTextResponse
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from ..data.images import (
    ImageTooLarge,
    SourceImage,
    UnsupportedImage,
    image_bytes_pixels,
    model_input,
    read_image_bytes,
)
from ..defaults import DEFAULT_EXPLAIN_METHOD, AttributionMethod
from ..errors import DataError, MedclassifyError
from ..inference.predictor import Predictions, Predictor
from .limits import PixelBudget
from .schemas import ErrorResponse, Health, ModelInfo, ModelList, PredictResponse
from .served import MicroBatcher, ServedModel, png_data_url
from .settings import ServeSettings

STATIC = Path(__file__).resolve().parent / "static"

# Decoded images are kept at most this long on their longer side (shown on the page, and the
# Grad-CAM overlay's size); JPEGs are decoded at a reduced scale that still reaches it.
DISPLAY_SIDE = 512


class Telemetry:
    """Prometheus counters in a registry of the app's own (several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "medclassify_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "medclassify_request_seconds",
            "HTTP request latency",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.predictions = Counter(
            "medclassify_predictions",
            "Predicted images per model and class",
            ["model", "label"],
            registry=self.registry,
        )


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "a file is not a readable image, or the model cannot explain"},
    404: {"model": ErrorResponse, "description": "unknown model"},
    408: {"model": ErrorResponse, "description": "the request body paused or took too long"},
    413: {
        "model": ErrorResponse,
        "description": "a file, the number of files, the request, or the pixels of an image or of "
        "the request's images are over the limit; or a Deflate-compressed DICOM",
    },
    415: {"model": ErrorResponse, "description": "a file is not PNG, JPEG, TIFF, BMP or DICOM (judged by its content)"},
    422: {"model": ErrorResponse, "description": "a parameter is invalid or no file was sent: 'WHERE: what is wrong'"},
    503: {"model": ErrorResponse, "description": "the server is receiving too many uploads at once"},
}


def _http_error(exc: DataError) -> HTTPException:
    status = 415 if isinstance(exc, UnsupportedImage) else 413 if isinstance(exc, ImageTooLarge) else 400
    return HTTPException(status, str(exc))


def _prepare(
    data: bytes, name: str, settings: ServeSettings, size: int, channels: int
) -> list[tuple[SourceImage, np.ndarray]]:
    """Decode one upload; per image, a display copy (at most DISPLAY_SIDE) and the model input.
    Nothing at the full size outlives this call."""
    prepared = []
    for source in read_image_bytes(data, name, settings.max_pixels, draft_side=DISPLAY_SIDE):
        pixels = model_input([source], size, channels)[0]
        prepared.append((SourceImage(source.name, display_copy(source.pixels), source.grey), pixels))
    return prepared


def display_copy(pixels: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """uint8 H x W x 3 shrunk (aspect ratio kept) so that its longer side is at most ``side``."""
    height, width = pixels.shape[:2]
    if max(height, width) <= side:
        return pixels
    image = Image.fromarray(pixels)
    image.thumbnail((side, side), Image.Resampling.BICUBIC)
    return np.asarray(image)


UPLOAD_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/bmp", "application/dicom")
# The OpenAPI encoding of the upload: which content each file part may hold (checked by content, not by this header).
UPLOAD_ENCODING = {
    "requestBody": {
        "content": {"multipart/form-data": {"encoding": {"files": {"contentType": ", ".join(UPLOAD_TYPES)}}}}
    }
}


@dataclass
class Service:
    """What the routes of one application share: its models (name -> model), limits, a micro-batcher
    per model, the server-wide decoding budget, one Grad-CAM lock per model (Grad-CAM hooks the
    model: one request at a time) and the Prometheus counters."""

    models: dict[str, ServedModel]
    settings: ServeSettings
    telemetry: Telemetry
    batchers: dict[str, MicroBatcher]
    decoding: PixelBudget
    explain_locks: dict[str, asyncio.Lock]

    @classmethod
    def of(cls, models: dict[str, ServedModel], settings: ServeSettings) -> Service:
        return cls(
            models,
            settings,
            Telemetry(),
            {
                name: MicroBatcher(served.predictor.predict_pixels, settings.max_batch)
                for name, served in models.items()
            },
            PixelBudget(settings.max_decoding_pixels),
            {name: asyncio.Lock() for name in models},
        )

    def pick(self, name: str | None) -> ServedModel:
        """The model a request names (default: the first); 404 for an unknown name."""
        if name is None:
            return next(iter(self.models.values()))
        if name not in self.models:
            raise HTTPException(404, f"unknown model '{name}'; loaded: {', '.join(self.models)}")
        return self.models[name]

    async def read_upload(self, upload: UploadFile, index: int) -> tuple[str, bytes]:
        name = PurePath(upload.filename or f"file{index}").name[:200] or f"file{index}"
        data = await upload.read(self.settings.max_upload_bytes + 1)
        # the guard stops such parts as they stream in; this is its backstop
        if len(data) > self.settings.max_upload_bytes:
            raise HTTPException(413, f"{name}: larger than the upload limit of {self.settings.max_upload_mb:g} MB")
        return name, data

    async def decode(
        self, uploads: list[tuple[str, bytes]], predictor: Predictor
    ) -> list[tuple[SourceImage, np.ndarray]]:
        """Every image's pixel count from its header first (per image and per request limits), then
        one upload after another, each holding its pixels of the server-wide decoding budget."""
        try:
            counts = [
                await asyncio.to_thread(image_bytes_pixels, data, name, self.settings.max_pixels)
                for name, data in uploads
            ]
            if sum(counts) > self.settings.max_request_pixels:
                raise HTTPException(
                    413,
                    f"the request's images hold {sum(counts):,} pixels together; the limit per request is "
                    f"{self.settings.max_request_pixels:,}",
                )
            prepared = []
            for (name, data), count in zip(uploads, counts):
                async with self.decoding.reserve(count):
                    prepared += await asyncio.to_thread(
                        _prepare, data, name, self.settings, predictor.size, predictor.channels
                    )
            return prepared
        except DataError as exc:
            raise _http_error(exc) from None


def service(request: Request) -> Service:
    """The application's :class:`Service`, for the routes."""
    return request.app.state.service


ServiceOf = Annotated[Service, Depends(service)]
router = APIRouter()


@router.get("/health", response_model=Health, tags=["service"])
async def health(service: ServiceOf) -> Health:
    """Liveness: answers while predictions run."""
    return Health(status="ok", models=len(service.models))


@router.get("/v1/models", response_model=ModelList, tags=["models"])
async def list_models(service: ServiceOf) -> ModelList:
    """The loaded models with their classes, input size, task and test metrics."""
    return ModelList(models=[ModelInfo(**served.info()) for served in service.models.values()])


@router.post(
    "/v1/predict", response_model=PredictResponse, responses=ERRORS, tags=["models"], openapi_extra=UPLOAD_ENCODING
)
async def predict(
    request: Request,
    service: ServiceOf,
    files: Annotated[
        list[UploadFile], File(description="one or more PNG, JPEG, TIFF, BMP or DICOM files", min_length=1)
    ],
    model: Annotated[str | None, Query(description="a name from /v1/models (default: the first model)")] = None,
    explain: Annotated[bool, Query(description="add the overlay of the predicted class (see 'method')")] = False,
    method: Annotated[
        AttributionMethod,
        Query(description="with explain: the attribution method (LayerCAM by default; see 'explain --evaluate')"),
    ] = DEFAULT_EXPLAIN_METHOD,
    top: Annotated[int, Query(ge=1, le=100, description="classes listed in 'top'")] = 3,
    preview: Annotated[
        bool, Query(description="add the decoded image as a PNG (e.g. for DICOM, which browsers cannot show)")
    ] = False,
) -> PredictResponse:
    """Class probabilities for each uploaded image (every frame of a multi-frame DICOM)."""
    served, settings = service.pick(model), service.settings
    request.state.model = served.name
    if len(files) > settings.max_files:
        raise HTTPException(
            413, f"more than {settings.max_files} files in one request; the limit is {settings.max_files}"
        )
    uploads = [await service.read_upload(upload, i) for i, upload in enumerate(files)]
    predictor = served.predictor
    prepared = await service.decode(uploads, predictor)
    del uploads
    sources = [source for source, _ in prepared]
    pixels = np.stack([p for _, p in prepared])
    probabilities = await service.batchers[served.name].submit(pixels)
    predictions = Predictions(
        [s.name for s in sources],
        probabilities,
        predictor.class_names,
        predictor.multi_label,
        operating_point=predictor.operating_point,
        conformal=predictor.conformal,
    )
    heatmaps: list[str | None] = [None] * len(sources)
    if explain:
        async with service.explain_locks[served.name]:
            try:
                drawn = await asyncio.to_thread(
                    served.heatmaps, sources, pixels, [int(k) for k in probabilities.argmax(axis=1)], method
                )
                heatmaps = [*drawn]
            except MedclassifyError as exc:
                raise HTTPException(400, str(exc)) from None
    for i in range(len(predictions)):
        service.telemetry.predictions.labels(served.name, predictions.predicted(i)).inc()
    records = predictions.records(top)
    for record, heatmap, source in zip(records, heatmaps, sources):
        record["heatmap"] = heatmap
        record["image"] = png_data_url(source.pixels) if preview else None
    return PredictResponse.model_validate({"model": served.name, "version": served.version, "predictions": records})


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    tags=["service"],
    responses={200: {"content": {"text/plain": {"example": "medclassify_requests_total{...} 12.0"}}}},
)
async def metrics(service: ServiceOf) -> PlainTextResponse:
    """Prometheus text format: requests, latency histogram, predictions per class."""
    return PlainTextResponse(generate_latest(service.telemetry.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")
