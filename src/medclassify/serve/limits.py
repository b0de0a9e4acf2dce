"""What one request may cost the server, enforced while it arrives rather than after.

* :class:`UploadGuard` (ASGI middleware on ``POST /v1/predict``): the body is counted as it streams
  in and refused with ``413`` as soon as one file part passes the per-file limit, the parts pass
  the file count, or the body passes the request limit; ``503`` when the uploads held by all
  requests together would pass the server's cap; ``408`` when the body stalls or takes too long.
  Nothing past a limit is read, so nothing past it is spooled to disk or memory.
* :class:`PixelBudget`: decoding reserves the image's pixel count from a budget shared by all
  requests, so that concurrent requests cannot decode more pixels at once than the budget.
* :func:`header_timeout_protocol`: uvicorn's HTTP/1.1 protocol with a deadline for each request's
  headers (uvicorn bounds their size, not their time).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import PurePath

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServeSettings


class PartCounter:
    """Follows the multipart stream and raises ``413`` at the first byte past a limit."""

    def __init__(self, boundary: bytes, max_part_bytes: int, max_part_mb: float, max_parts: int):
        self.max_part_bytes, self.max_part_mb, self.max_parts = max_part_bytes, max_part_mb, max_parts
        self.parts = 0
        self.part_bytes = 0
        self.header_field = b""
        self.disposition = b""
        self.error: HTTPException | None = None
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_part_data": self._data,
                "on_header_field": self._field,
                "on_header_value": self._value,
                "on_header_end": self._header_end,
            },
        )

    def _begin(self) -> None:
        self.parts += 1
        self.part_bytes, self.disposition = 0, b""
        if self.parts > self.max_parts and self.error is None:
            self.error = HTTPException(
                413, f"more than {self.max_parts} files in one request; the limit is {self.max_parts}"
            )

    def _field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        if self.header_field.lower() == b"content-disposition":
            self.disposition += data[start:end]

    def _header_end(self) -> None:
        self.header_field = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.part_bytes += end - start
        if self.part_bytes > self.max_part_bytes and self.error is None:
            _, options = parse_options_header(self.disposition)
            name = (
                PurePath(options.get(b"filename", b"").decode("utf-8", "replace")).name[:200] or f"file{self.parts - 1}"
            )
            self.error = HTTPException(413, f"{name}: larger than the upload limit of {self.max_part_mb:g} MB")

    def feed(self, chunk: bytes) -> None:
        self.parser.write(chunk)
        if self.error is not None:
            raise self.error


class UploadGuard:
    """Limits on the prediction route's body while it streams in (see the module's description)."""

    def __init__(self, app: ASGIApp, settings: ServeSettings, path: str = "/v1/predict") -> None:
        self.app = app
        self.settings = settings
        self.path = path
        self.inflight = 0  # upload bytes held by the requests in progress, all together

    def _refuse(self, status: int, detail: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        settings = self.settings
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_request_bytes:
            await self._refuse(413, self._request_message())(scope, receive, send)
            return
        content_type, options = parse_options_header(headers.get("content-type", ""))
        counter = None
        if content_type == b"multipart/form-data" and options.get(b"boundary"):
            counter = PartCounter(
                options[b"boundary"], settings.max_upload_bytes, settings.max_upload_mb, settings.max_files
            )
        held, complete = 0, False
        deadline = time.monotonic() + settings.body_timeout

        async def guarded_receive() -> Message:
            nonlocal held, complete
            if complete:
                return await receive()
            wait = min(settings.read_timeout, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body did not arrive in time (limits: {settings.read_timeout:g} s without data, "
                    f"{settings.body_timeout:g} s in all)",
                ) from None
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            complete = not message.get("more_body", False)
            if held + len(chunk) > settings.max_request_bytes:
                raise HTTPException(413, self._request_message())
            if self.inflight + len(chunk) > settings.max_inflight_bytes:
                raise HTTPException(503, "the server is receiving too many uploads at once; try again in a moment")
            held += len(chunk)
            self.inflight += len(chunk)
            if counter is not None:
                counter.feed(chunk)
            return message

        try:
            await self.app(scope, guarded_receive, send)
        finally:
            self.inflight -= held

    def _request_message(self) -> str:
        s = self.settings
        return f"the request is larger than its limit of {s.max_request_bytes / 2**20:g} MB ({s.max_files} files of {s.max_upload_mb:g} MB)"


class PixelBudget:
    """An asynchronous weighted semaphore over pixels: ``async with budget.reserve(n)`` waits until
    ``n`` pixels (at most the whole budget) are free."""

    def __init__(self, pixels: int):
        self.capacity = pixels
        self.free = pixels
        self.changed = asyncio.Condition()

    def reserve(self, pixels: int) -> _Reservation:
        return _Reservation(self, min(pixels, self.capacity))


class _Reservation:
    def __init__(self, budget: PixelBudget, pixels: int):
        self.budget, self.pixels = budget, pixels

    async def __aenter__(self) -> None:
        async with self.budget.changed:
            await self.budget.changed.wait_for(lambda: self.budget.free >= self.pixels)
            self.budget.free -= self.pixels

    async def __aexit__(self, *exc: object) -> None:
        async with self.budget.changed:
            self.budget.free += self.pixels
            self.budget.changed.notify_all()


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol that closes a connection whose next request's headers have not
    arrived within ``seconds`` (a client trickling header bytes would otherwise hold it forever)."""

    class HeaderTimeoutProtocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn narrows it too
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._waiting_for = self.cycle  # headers are in once a new request cycle starts
            self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            if self.cycle is self._waiting_for and not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not self._waiting_for:
                self._header_timer.cancel()

        def on_response_complete(self) -> None:
            self._header_timer.cancel()
            self._arm()
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
