"""Refuse request bodies over the configured size before any route reads them (413)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import render
from gateway.outcomes import too_large


class BodySizeLimit:
    """ASGI middleware: a declared ``Content-Length`` above ``max_bytes`` gets 413 at once.

    Bodies without a length (chunked) are bounded where they are read
    (:func:`gateway.fhir.http.read_json_body`).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length":
                    if not value.isdigit() or int(value) > self.max_bytes:
                        response = render(too_large(f"The body exceeds {self.max_bytes} bytes."))
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)
