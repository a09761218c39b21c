"""The source interface and the REST plumbing shared by the HTTP sources.

The shape follows dlt/airbyte: ``check()`` says what the server offers, and each
resource type has a stream of pages, each carrying the cursor to store after it.
To add a source kind, subclass :class:`Source` (or :class:`RestSource` for a FHIR
server), implement ``stream``, and register it in :func:`connectors.build_source`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from connectors.config import Capabilities, Page, SourceConfig, SourceOptions
from connectors.cursor import Cursor
from connectors.errors import PermanentError
from connectors.http import FhirHttp, parse_json_object

logger = logging.getLogger(__name__)

HTTP_NOT_FOUND = 404
HTTP_GONE = 410


class Source(abc.ABC):
    """A place resources come from."""

    def __init__(self, config: SourceConfig, options: SourceOptions) -> None:
        self.config = config
        self.options = options

    @abc.abstractmethod
    def check(self) -> Capabilities:
        """What the source offers (resource types, search parameters, operations)."""

    @abc.abstractmethod
    def stream(self, resource_type: str, cursor: str | None = None) -> Iterator[Page]:
        """Pages of ``resource_type`` changed since ``cursor`` (everything when None)."""

    def stream_lines(self, resource_type: str, cursor: str | None = None) -> Iterator[Page]:
        """:meth:`stream`, for a consumer that can take a page's NDJSON lines undecoded
        (:attr:`Page.lines <connectors.config.Page.lines>`). A source that reads NDJSON
        may leave its lines to that consumer; by default its pages are :meth:`stream`'s."""
        return self.stream(resource_type, cursor)

    @abc.abstractmethod
    def fetch(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current version of one resource, or None when it does not exist."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def decode_cursor(cursor: str | None) -> Cursor:
    try:
        return Cursor.decode(cursor)
    except ValueError as exc:
        raise PermanentError("stored cursor is not one this connector wrote") from exc


class RestSource(Source):
    """A FHIR REST server: ``check()`` reads ``/metadata``, ``fetch()`` is a read."""

    def __init__(self, config: SourceConfig, options: SourceOptions, http: FhirHttp) -> None:
        super().__init__(config, options)
        self.http = http
        self._capabilities: Capabilities | None = None

    def check(self) -> Capabilities:
        """Read the CapabilityStatement (https://hl7.org/fhir/R4/http.html#capabilities)."""
        _, statement = self.http.get_json("metadata")
        if statement.get("resourceType") != "CapabilityStatement":
            raise PermanentError(
                "metadata is not a CapabilityStatement", url=self.http.url("metadata")
            )
        self._capabilities = Capabilities.from_capability_statement(statement)
        logger.info(
            "connector capability statement read",
            extra={"count": len(self._capabilities.resources)},
        )
        return self._capabilities

    def capabilities(self) -> Capabilities:
        """The cached CapabilityStatement, read on first use."""
        return self._capabilities if self._capabilities is not None else self.check()

    def fetch(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """Read (https://hl7.org/fhir/R4/http.html#read); None for 404 Not Found / 410 Gone."""
        response = self.http.request(
            "GET",
            f"{resource_type}/{resource_id}",
            allow_statuses=frozenset({HTTP_NOT_FOUND, HTTP_GONE}),
        )
        if response.status_code in (HTTP_NOT_FOUND, HTTP_GONE):
            return None
        return parse_json_object(response)

    def close(self) -> None:
        self.http.close()
