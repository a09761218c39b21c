"""Refuse what no route can take before any route reads it: bodies over the configured
size (413), and a NUL character in the URL (400: no text PostgreSQL stores can hold one,
and no FHIR id, token or string may)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import render
from gateway.outcomes import bad_request, too_large


class BodySizeLimit:
    """ASGI middleware: a declared ``Content-Length`` above ``max_bytes`` gets 413 at once,
    a URL with a NUL character 400.

    Bodies without a length (chunked) are bounded where they are read
    (:func:`gateway.fhir.http.read_json_body`).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"")
            if b"%00" in query or b"\x00" in query or "\x00" in scope.get("path", ""):
                response = render(bad_request("The URL holds a NUL character (%00)."))
                await response(scope, receive, send)
                return
            for name, value in scope["headers"]:
                if name == b"content-length":
                    if not value.isdigit() or int(value) > self.max_bytes:
                        response = render(too_large(f"The body exceeds {self.max_bytes} bytes."))
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)
