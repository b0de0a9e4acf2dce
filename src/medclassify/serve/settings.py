"""The server's limits as one dataclass, without importing FastAPI, so the command line builds its
options from these fields (help and default) and ``medclassify serve --help`` stays fast."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..defaults import MAX_PIXELS
from ..errors import ConfigError


def limit(default: float, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class ServeSettings:
    """The server's limits; :meth:`validate` names the option of an impossible value."""

    max_upload_mb: float = limit(10.0, "largest accepted file in MB")
    max_pixels: int = limit(MAX_PIXELS, "largest accepted image in pixels (all frames of a DICOM file together)")
    max_files: int = limit(32, "most files in one request")
    max_batch: int = limit(64, "most images in one forward pass of queued requests")
    max_request_pixels: int = limit(100_000_000, "most pixels of all images in one request together")
    max_decoding_pixels: int = limit(
        MAX_PIXELS, "most pixels being decoded at once, all requests together (by default one largest image)"
    )
    max_inflight_mb: float = limit(1024.0, "most upload MB held at once, all requests together; more is 503")
    read_timeout: float = limit(10.0, "seconds a request body may pause")
    body_timeout: float = limit(120.0, "seconds for a whole request body")
    header_timeout: float = limit(10.0, "seconds for a request's headers")
    keep_alive: float = limit(5.0, "seconds an idle connection stays open")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_request_bytes(self) -> int:
        return self.max_upload_bytes * self.max_files + (1 << 20)  # plus room for the multipart framing

    @property
    def max_inflight_bytes(self) -> int:
        return max(int(self.max_inflight_mb * 1024 * 1024), self.max_request_bytes)

    def validate(self) -> ServeSettings:
        """Raise :class:`ConfigError` naming the option of a limit that is not a positive finite number."""
        for f in fields(self):
            value = getattr(self, f.name)
            whole = f.type == "int"
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
                or (whole and value != int(value))
            ):
                kind = "a whole number" if whole else "a finite number"
                raise ConfigError(f"--{f.name.replace('_', '-')} must be {kind} > 0, got {value}")
        return self
