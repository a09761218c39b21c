"""One HTTP client per source: retry policy, rate limit and FHIR error mapping.

Every request a source makes goes through :class:`FhirHttp.request`, so there is
exactly one retry policy (429, 5xx and timeouts retried with exponential backoff
and full jitter, honouring ``Retry-After``) and one rate limit per source.
Any other 4xx fails at once with the server's OperationOutcome text; see
https://hl7.org/fhir/R4/http.html#summary for how FHIR servers report errors.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from connectors.config import SourceOptions
from connectors.errors import (
    AuthenticationError,
    MalformedPageError,
    PermanentError,
    TransientError,
    UnsupportedResourceError,
)

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
#: HTTP statuses worth retrying besides 5xx.
RETRYABLE_STATUSES = frozenset({408, 429})
SERVER_ERROR_MIN = 500
CLIENT_ERROR_MIN = 400
HTTP_PARTIAL_CONTENT = 206
HTTP_RANGE_NOT_SATISFIABLE = 416
HTTP_UNAUTHORIZED = 401
HTTP_NOT_FOUND = 404
HTTP_GONE = 410
#: OperationOutcome text kept on an error, at most.
MAX_OUTCOME_CHARS = 1000

Sleep = Callable[[float], None]
Clock = Callable[[], float]


def no_auth(request: httpx.Request) -> httpx.Request:
    """An auth callable that adds nothing (to override a client's auth for one request)."""
    return request


def url_path(url: str | httpx.URL) -> str:
    """The URL without query string or fragment: safe to log and to put in errors."""
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def outcome_text(response: httpx.Response) -> str | None:
    """Diagnostics/details text of an OperationOutcome body, if the response has one."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return None
    texts = []
    for issue in body.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        text = issue.get("diagnostics") or (
            details.get("text") if isinstance(details, dict) else None
        )
        texts.append(
            f"{issue.get('severity', 'error')} {issue.get('code', '')}: {text or ''}".strip()
        )
    return "; ".join(texts)[:MAX_OUTCOME_CHARS] or None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter.

    Attempt ``n`` (1-based) that failed transiently waits ``Retry-After`` when the
    server sent one, else a random delay in ``[0, min(backoff_max_s, base * 2**(n-1))]``.
    A ``Retry-After`` longer than ``max_retry_after_s`` is not waited out in-process:
    the request fails with :class:`TransientError` carrying it, for the scheduler.
    """

    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float
    max_retry_after_s: float

    @classmethod
    def from_options(cls, options: SourceOptions) -> RetryPolicy:
        return cls(
            options.max_attempts,
            options.backoff_base_s,
            options.backoff_max_s,
            options.max_retry_after_s,
        )

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return random.uniform(0.0, ceiling)


class RateLimiter:
    """At most ``requests_per_s`` request starts per second (evenly spaced), thread-safe."""

    def __init__(
        self,
        requests_per_s: float | None,
        *,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        self.interval = 1.0 / requests_per_s if requests_per_s else 0.0
        self._sleep = sleep
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


class RateLimiters:
    """The process's rate limiters, one per source base URL and rate: a sync builds its
    source again for every chunk (a page, on a worker), and a limiter of its own would
    let each chunk's first request go at once, whatever the last chunk's did."""

    def __init__(self) -> None:
        self._limiters: dict[tuple[str, float], RateLimiter] = {}
        self._lock = threading.Lock()

    def get(self, base_url: str, requests_per_s: float | None, sleep: Sleep) -> RateLimiter:
        if not requests_per_s or sleep is not time.sleep:
            # No limit, or a test's own clock: nothing to share.
            return RateLimiter(requests_per_s, sleep=sleep)
        with self._lock:
            key = (base_url, float(requests_per_s))
            limiter = self._limiters.get(key)
            if limiter is None:
                limiter = self._limiters[key] = RateLimiter(requests_per_s, sleep=sleep)
            return limiter

    def clear(self) -> None:
        with self._lock:
            self._limiters.clear()


#: The process's rate limiters.
LIMITERS = RateLimiters()


class FhirHttp:
    """A source's HTTP session. Its rate limit is shared by the sessions of the same base URL
    and rate in the process (:class:`RateLimiters`), as its chunks follow one another."""

    def __init__(
        self,
        base_url: str,
        options: SourceOptions,
        *,
        auth: httpx.Auth | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = RetryPolicy.from_options(options)
        self.limiter = LIMITERS.get(self.base_url, options.requests_per_s, sleep)
        self._sleep = sleep
        self.client = httpx.Client(
            auth=auth,
            transport=transport,
            timeout=options.timeout_s,
            follow_redirects=True,
            headers={"Accept": FHIR_JSON, **options.headers},
        )

    def same_origin(self, url: str) -> bool:
        """Whether ``url`` has the base URL's scheme, host and port."""
        return httpx.URL(url).copy_with(path="/", query=None, fragment=None) == httpx.URL(
            self.base_url
        ).copy_with(path="/", query=None, fragment=None)

    def url(self, path: str) -> str:
        """``path`` relative to the FHIR base; absolute URLs are returned unchanged."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url

    def request(
        self,
        method: str,
        url: str,
        *,
        params: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        allow_statuses: frozenset[int] = frozenset(),
        body: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """Send with the retry policy. Returns a 2xx/3xx response or one in ``allow_statuses``.

        Credentials go only to the source's own origin: a URL elsewhere (a ``next`` link
        or ``Content-Location`` pointing at another host) is requested without them.
        ``body`` is sent as ``application/fhir+json``; a POST is sent once, since a retry
        after a lost answer could create the resource twice.
        """
        full = self.url(url)
        auth = httpx.USE_CLIENT_DEFAULT if self.same_origin(full) else no_auth
        content = None
        if body is not None:
            content = json.dumps(body).encode("utf-8")
            headers = {"Content-Type": FHIR_JSON, **(headers or {})}
        attempts = 1 if method == "POST" else self.policy.max_attempts
        for attempt in range(1, attempts + 1):
            self.limiter.acquire()
            try:
                response = self.client.request(
                    method,
                    full,
                    params=tuple(params) if params else None,
                    headers=headers,
                    content=content,
                    auth=auth,
                )
            except httpx.TimeoutException as exc:
                failure = TransientError(f"{method} {url_path(full)} timed out", url=url_path(full))
                failure.__cause__ = exc
            except httpx.TransportError as exc:
                failure = TransientError(
                    f"{method} {url_path(full)} failed: {type(exc).__name__}", url=url_path(full)
                )
                failure.__cause__ = exc
            except TransientError as exc:  # raised by an auth flow's token request
                failure = exc
            else:
                if response.status_code in allow_statuses:
                    return response
                problem = self._classify(method, response)
                if problem is None:
                    return response
                failure = problem
            if attempt == attempts:
                raise failure
            if (
                failure.retry_after is not None
                and failure.retry_after > self.policy.max_retry_after_s
            ):
                raise failure
            delay = self.policy.delay(attempt, failure.retry_after)
            logger.warning(
                "connector request will be retried",
                extra={
                    "path": url_path(full),
                    "status_code": failure.status_code,
                    "attempt": attempt,
                    "delay_s": round(delay, 3),
                },
            )
            self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    def _classify(self, method: str, response: httpx.Response) -> TransientError | None:
        """None for success; a TransientError to retry; raises PermanentError at once."""
        status = response.status_code
        where = url_path(response.request.url)
        if status < CLIENT_ERROR_MIN:
            return None
        if status >= SERVER_ERROR_MIN or status in RETRYABLE_STATUSES:
            return TransientError(
                f"{method} {where} answered HTTP {status}",
                url=where,
                status_code=status,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        outcome = outcome_text(response)
        message = f"{method} {where} answered HTTP {status}" + (f": {outcome}" if outcome else "")
        error_class: type[PermanentError] = PermanentError
        if status == HTTP_UNAUTHORIZED:
            error_class = AuthenticationError
        elif status in (HTTP_NOT_FOUND, HTTP_GONE):
            error_class = UnsupportedResourceError
        raise error_class(message, url=where, status_code=status, outcome=outcome)

    def get_json(
        self,
        url: str,
        *,
        params: list[tuple[str, str]] | None = None,
        allow_statuses: frozenset[int] = frozenset(),
    ) -> tuple[int, dict[str, Any]]:
        """GET and parse a JSON object; a body that is not a JSON object is a MalformedPageError."""
        response = self.request("GET", url, params=params, allow_statuses=allow_statuses)
        return response.status_code, parse_json_object(response)

    def stream_lines(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        auth: Callable[[httpx.Request], httpx.Request] | None = None,
        start_byte: int = 0,
    ) -> Iterator[tuple[bytes, int]]:
        """GET ``url`` and yield ``(line, end_offset)`` without holding the body in memory.

        ``end_offset`` is the byte offset just after the line, to resume from with
        ``start_byte`` (sent as a ``Range`` request; a server that ignores it is
        answered by skipping that many bytes). The connection is retried under the
        policy until the response starts; a failure in the middle of the body raises
        :class:`TransientError`. ``auth`` overrides the client's auth for this request.
        """
        full = self.url(url)
        send_headers = dict(headers or {})
        if start_byte:
            send_headers["Range"] = f"bytes={start_byte}-"
        for attempt in range(1, self.policy.max_attempts + 1):
            self.limiter.acquire()
            request = self.client.build_request("GET", full, headers=send_headers)
            try:
                response = self.client.send(
                    request,
                    stream=True,
                    auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                failure = TransientError(f"GET {url_path(full)} failed", url=url_path(full))
                failure.__cause__ = exc
            else:
                try:
                    if response.status_code == HTTP_RANGE_NOT_SATISFIABLE and start_byte:
                        return  # resumed exactly at the end of the file: nothing left
                    if response.status_code >= CLIENT_ERROR_MIN:
                        response.read()
                    problem = self._classify("GET", response)
                    if problem is None:
                        base = start_byte if response.status_code == HTTP_PARTIAL_CONTENT else 0
                        try:
                            yield from split_lines(
                                response.iter_bytes(), base=base, skip=start_byte - base
                            )
                        except httpx.TransportError as exc:
                            raise TransientError(
                                f"GET {url_path(full)} broke off", url=url_path(full)
                            ) from exc
                        return
                    failure = problem
                finally:
                    response.close()
            if attempt == self.policy.max_attempts:
                raise failure
            self._sleep(self.policy.delay(attempt, failure.retry_after))

    def close(self) -> None:
        self.client.close()


def parse_json_object(response: httpx.Response) -> dict[str, Any]:
    """The response body as a JSON object, or MalformedPageError naming only the URL."""
    where = url_path(response.request.url)
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPageError(
            f"response from {where} is not valid JSON", url=where, status_code=response.status_code
        ) from exc
    if not isinstance(body, dict):
        raise MalformedPageError(
            f"response from {where} is not a JSON object",
            url=where,
            status_code=response.status_code,
        )
    return body


def split_lines(
    chunks: Iterator[bytes], *, base: int = 0, skip: int = 0
) -> Iterator[tuple[bytes, int]]:
    """Re-cut a byte stream into ``(line, end_offset)`` (``\n`` or ``\r\n`` endings).

    The stream starts at absolute offset ``base``; its first ``skip`` bytes are
    dropped. At most one partial line is held in memory.
    """
    offset = base
    pending = b""
    for chunk in chunks:
        if skip:
            dropped = min(skip, len(chunk))
            chunk, skip, offset = chunk[dropped:], skip - dropped, offset + dropped
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            offset += len(line) + 1
            yield line.rstrip(b"\r"), offset
    if pending:
        offset += len(pending)
        yield pending.rstrip(b"\r"), offset
