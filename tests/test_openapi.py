"""Property-based test of the HTTP API against its own OpenAPI schema (schemathesis): generated
requests, valid and invalid (schema-violating), must get documented status codes and responses that match the schema,
never a server error, and a schema-valid request must be accepted. The schema says each uploaded
part is PNG, JPEG, TIFF, BMP or DICOM; the strategies below make real images of random size, mode
and content for those types, so that "valid" means what it means to the server."""

from __future__ import annotations

import io

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode

from medclassify.serve import create_app, load_served_models

pytestmark = pytest.mark.slow  # schemathesis explores the whole API


def encoded_images(fmt: str) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw) -> bytes:
        width, height = draw(st.integers(1, 96)), draw(st.integers(1, 96))
        mode = draw(st.sampled_from(["L", "RGB"]))
        seed = draw(st.integers(0, 2**32 - 1))
        shape = (height, width) if mode == "L" else (height, width, 3)
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode).save(
            buffer, format=fmt
        )
        return buffer.getvalue()

    return build()


for media, fmt in (("image/png", "PNG"), ("image/jpeg", "JPEG"), ("image/tiff", "TIFF"), ("image/bmp", "BMP")):
    schemathesis.openapi.media_type(media, encoded_images(fmt))


def test_api_conforms_to_its_openapi_schema(quadrant_run, exported_run):
    app = create_app(load_served_models([f"quadrants={quadrant_run}", f"onnx={exported_run / 'model.onnx'}"]))
    with TestClient(app):  # runs the lifespan: its end stops the batchers
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {f"{op.method.upper()} {op.path}" for op in operations} == {
            "GET /health",
            "GET /v1/models",
            "POST /v1/predict",
            "GET /metrics",
        }
        cases = [(op, GenerationMode.POSITIVE) for op in operations]
        cases += [
            (op, GenerationMode.NEGATIVE) for op in operations if op.path == "/v1/predict"
        ]  # the only one with inputs
        for operation, mode in cases:

            @given(case=operation.as_strategy(mode))
            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def conforms(case):
                if isinstance(case.body, dict) and isinstance(case.body.get("files"), bytes):
                    # A generated image goes out as one file part with a filename, as browsers and HTTP
                    # clients send files; a bare field without one is not an upload to FastAPI.
                    case.body["files"] = [case.body["files"]]
                case.call_and_validate()

            conforms()
