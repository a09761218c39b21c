"""Errors raised by connectors.

Callers decide what to do by class: a :class:`TransientError` is worth retrying
later (the retry policy already retried it a bounded number of times), a
:class:`PermanentError` will fail the same way again until someone changes the
configuration or the server. Messages carry URLs (without query strings), status
codes and OperationOutcome text from the server, never resource content.

::

    ConnectorError
    ├── TransientError            429, 5xx, connect/read timeouts (after retries)
    └── PermanentError            other 4xx, bad configuration, protocol violations
        ├── MalformedPageError    a page that is not parseable FHIR JSON
        ├── AuthenticationError   token endpoint refused us, or 401 after a fresh token
        ├── UnsupportedResourceError  404 / not in the CapabilityStatement
        └── BulkExportError       a Bulk Data job failed or answered out of protocol
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Base class for every connector failure.

    ``url`` is the request URL without its query string (query strings can carry
    search values); ``status_code`` is the HTTP status when there was a response.
    """

    def __init__(self, message: str, *, url: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.url = url
        self.status_code = status_code


class TransientError(ConnectorError):
    """Retryable: the server was overloaded, unavailable or too slow.

    ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, url=url, status_code=status_code)
        self.retry_after = retry_after


class PermanentError(ConnectorError):
    """Not retryable: fails at once. ``outcome`` is the server's OperationOutcome text."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status_code: int | None = None,
        outcome: str | None = None,
    ):
        super().__init__(message, url=url, status_code=status_code)
        self.outcome = outcome


class MalformedPageError(PermanentError):
    """A response body that is not parseable JSON (or not a Bundle). Carries the URL only."""


class AuthenticationError(PermanentError):
    """Credentials were rejected: by the token endpoint, or with 401 after a fresh token."""


class UnsupportedResourceError(PermanentError):
    """The server does not offer the resource type (404, or absent from its CapabilityStatement)."""


class BulkExportError(PermanentError):
    """A Bulk Data ``$export`` job failed, or the server answered outside the protocol."""
