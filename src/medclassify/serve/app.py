"""The HTTP service: ``create_app(models, settings)`` returns a FastAPI application.

Routes: ``GET /`` (the web page), ``GET /health``, ``GET /v1/models``, ``POST /v1/predict``,
``GET /metrics`` (Prometheus text). Uploads are recognised by their content, never written under a
name the client chose, and decoded, resized and predicted off the event loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .limits import UploadGuard
from .routes import STATIC, Service, router
from .served import ServedModel
from .settings import ServeSettings

log = logging.getLogger("medclassify.serve")


def route_family(path: str) -> str:
    """A label for requests outside the API routes that keeps the metrics' label set small."""
    return next(
        (prefix for prefix in ("/static", "/docs", "/openapi.json", "/redoc") if path.startswith(prefix)), "other"
    )


def create_app(models: dict[str, ServedModel], settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``models`` (name -> model) under ``settings``' limits: its
    routes (:mod:`.routes`), the upload guard, one JSON log line and the Prometheus figures per
    request, and every error as one line."""
    settings = settings or ServeSettings()
    settings.validate()
    shared = Service.of(models, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for batcher in shared.batchers.values():
            batcher.stop()

    app = FastAPI(
        title="medclassify",
        version=__version__,
        description="Classify medical images with models trained by medclassify, and see where the network looked "
        "(seven attribution methods, LayerCAM by default). A research tool, not a diagnosis.",
        lifespan=lifespan,
    )
    app.state.service = shared
    app.add_middleware(UploadGuard, settings=settings)  # inside 'observe', so that its refusals are logged and counted

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 as one line, like every other error: 'WHERE: what is wrong'."""
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server's log"}, status_code=500)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
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
            shared.telemetry.requests.labels(route, request.method, str(status)).inc()
            shared.telemetry.latency.labels(route).observe(elapsed)
            log.info(
                json.dumps(
                    {
                        "route": route,
                        "method": request.method,
                        "status": status,
                        "latency_ms": round(elapsed * 1000, 2),
                        "model": getattr(request.state, "model", None),
                    }
                )
            )

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
