"""``medclassify serve``: models over HTTP."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from ..errors import MedclassifyError
from .common import Command, add_device_option, add_run_argument


def add_options(parser: argparse.ArgumentParser) -> None:
    add_run_argument(
        parser,
        "run folders, .pt bundles, .onnx files (int8 too) or ExecuTorch .pte programs; NAME=RUN names a model (default: the folder's or file's name)",
        many=True,
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    from ..serve.settings import ServeSettings

    for f in fields(ServeSettings):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=float if f.type == "float" else int,
            default=f.default,
            help=f"{f.metadata['help']} (default: {f.default:,})"
            if f.type == "int"
            else f"{f.metadata['help']} (default: {f.default:g})",
        )
    parser.add_argument(
        "--max-connections", type=int, default=100, help="most open connections; more are answered 503 (default: 100)"
    )
    add_device_option(parser)


SERVE_EPILOG = """examples:
  medclassify serve runs/blood28                          # http://127.0.0.1:8000/
  medclassify serve blood=runs/blood28 organ=runs/organ64/model.onnx --port 9000

API: GET /v1/models, POST /v1/predict (multipart 'files'; ?model=NAME&explain=true&top=3),
GET /health, GET /metrics (Prometheus), GET /docs (OpenAPI). Listens on this machine only unless
--host says otherwise; put it behind an authenticating proxy before exposing it.
"""


def run(args: argparse.Namespace) -> int:
    import logging
    from dataclasses import fields as settings_fields

    import uvicorn

    from ..serve import ServeSettings, create_app, load_served_models
    from ..serve.limits import header_timeout_protocol

    if not 1 <= args.port <= 65535:
        raise MedclassifyError(f"--port must be from 1 to 65535, got {args.port}")
    if args.max_connections < 1:
        raise MedclassifyError(f"--max-connections must be >= 1, got {args.max_connections}")
    settings = ServeSettings(**{f.name: getattr(args, f.name) for f in settings_fields(ServeSettings)}).validate()
    models = load_served_models(args.runs, device=args.device)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("medclassify.serve")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    for served in models.values():
        print(f"serving '{served.name}': {served.predictor.describe()}", file=sys.stderr)
    print(
        f"web page: http://{args.host}:{args.port}/  API documentation: http://{args.host}:{args.port}/docs",
        file=sys.stderr,
    )
    uvicorn.run(
        create_app(models, settings),
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
        http=header_timeout_protocol(settings.header_timeout),
        timeout_keep_alive=settings.keep_alive,  # type: ignore[arg-type]  # seconds; uvicorn's timer takes a float too
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=args.max_connections,
    )
    return 0


COMMAND = Command(
    "serve models over HTTP: a JSON API and a web page for drag-and-drop prediction with heatmaps",
    SERVE_EPILOG,
    add_options,
    run,
)
