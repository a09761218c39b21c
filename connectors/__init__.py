"""Connectors: pull FHIR R4 resources from EHRs, incrementally and safely.

Knows HTTP and FHIR, nothing about our database or matching. Build a source with
:func:`build_source` from a :class:`SourceConfig`; ``check()`` reads the server's
CapabilityStatement, ``stream(type, cursor)`` yields :class:`Page` objects whose
cursor the caller stores with the page's data, ``fetch(type, id)`` reads one resource.
:func:`connectors.preflight.preflight` checks a source the way a sync would read it, first.

Errors (see :mod:`connectors.errors`)::

    ConnectorError
    ├── TransientError
    └── PermanentError
        ├── MalformedPageError
        ├── AuthenticationError
        ├── UnsupportedResourceError
        └── BulkExportError
"""

from __future__ import annotations

from connectors.auth import (
    BearerTokenAuth,
    ClientCredentialsAuth,
    OAuthTokenAuth,
    SmartBackendServicesAuth,
    build_auth,
)
from connectors.build import build_source
from connectors.bulk import BulkExportClient, BulkExportSource
from connectors.config import (
    PUSH_ONLY_KINDS,
    SOURCE_KINDS,
    Capabilities,
    Page,
    ResourceCapability,
    SourceConfig,
    SourceOptions,
)
from connectors.cursor import Cursor, CursorTracker
from connectors.errors import (
    AuthenticationError,
    BulkExportError,
    ConnectorError,
    MalformedPageError,
    PermanentError,
    TransientError,
    UnsupportedResourceError,
)
from connectors.history import HistorySource
from connectors.http import FhirHttp, RateLimiter, RetryPolicy, parse_retry_after
from connectors.ndjson import NdjsonDirectorySource, read_ndjson
from connectors.paginate import BundleNextLinkPaginator
from connectors.search import FhirSearchSource
from connectors.source import RestSource, Source

__all__ = [
    "PUSH_ONLY_KINDS",
    "SOURCE_KINDS",
    "AuthenticationError",
    "BearerTokenAuth",
    "BulkExportClient",
    "BulkExportError",
    "BulkExportSource",
    "BundleNextLinkPaginator",
    "Capabilities",
    "ClientCredentialsAuth",
    "ConnectorError",
    "Cursor",
    "CursorTracker",
    "FhirHttp",
    "FhirSearchSource",
    "HistorySource",
    "MalformedPageError",
    "NdjsonDirectorySource",
    "OAuthTokenAuth",
    "Page",
    "PermanentError",
    "RateLimiter",
    "ResourceCapability",
    "RestSource",
    "RetryPolicy",
    "SmartBackendServicesAuth",
    "Source",
    "SourceConfig",
    "SourceOptions",
    "TransientError",
    "UnsupportedResourceError",
    "build_auth",
    "build_source",
    "parse_retry_after",
    "read_ndjson",
]
