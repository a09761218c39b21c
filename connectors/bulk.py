"""FHIR Bulk Data ``$export`` client (https://hl7.org/fhir/uv/bulkdata/export.html).

Kick-off with ``Prefer: respond-async`` at system, Patient or Group level; poll
the ``Content-Location`` status URL honouring ``Retry-After`` (and reading
``X-Progress``); stream every NDJSON output file line by line; surface the
``error[]`` files as OperationOutcomes; report ``deleted[]`` entries as
deletions; use ``transactionTime`` as the next ``_since``; ``DELETE`` the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx

from connectors.config import Page, RawLine, SourceConfig, SourceOptions
from connectors.cursor import Cursor, parse_instant
from connectors.errors import BulkExportError, ConnectorError
from connectors.http import (
    CLIENT_ERROR_MIN,
    Clock,
    FhirHttp,
    Sleep,
    no_auth,
    outcome_text,
    parse_json_object,
    parse_retry_after,
    url_path,
)
from connectors.ndjson import decode_lines, parse_line
from connectors.source import RestSource, decode_cursor

logger = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"
HTTP_OK = 200
HTTP_ACCEPTED = 202
HTTP_TOO_MANY_REQUESTS = 429
ERROR_STATUSES = frozenset(range(CLIENT_ERROR_MIN, 600))
#: OperationOutcome issue code meaning "try again" on a status poll.
TRANSIENT_ISSUE_CODE = "transient"


class BulkExportClient:
    """One ``$export`` job's life cycle over a source's :class:`FhirHttp`."""

    def __init__(
        self,
        http: FhirHttp,
        options: SourceOptions,
        *,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        self.http = http
        self.options = options
        self._sleep = sleep
        self._clock = clock

    def kickoff_path(self) -> str:
        if self.options.bulk_level == "patient":
            return "Patient/$export"
        if self.options.bulk_level == "group":
            return f"Group/{self.options.group_id}/$export"
        return "$export"

    def kick_off(self, types: list[str], since: str | None) -> str:
        """Start a job; returns its status URL (``Content-Location``)."""
        params = [("_outputFormat", NDJSON)]
        if types:
            params.append(("_type", ",".join(types)))
        if since:
            params.append(("_since", since))
        response = self.http.request(
            "GET",
            self.kickoff_path(),
            params=params,
            headers={"Prefer": "respond-async", "Accept": "application/fhir+json"},
        )
        location = response.headers.get("Content-Location")
        if response.status_code != HTTP_ACCEPTED or not location:
            raise BulkExportError(
                f"$export kick-off answered HTTP {response.status_code} without a status URL",
                url=url_path(response.request.url),
                status_code=response.status_code,
            )
        logger.info("bulk export started", extra={"path": url_path(location)})
        return location

    def wait(self, status_url: str) -> dict[str, Any]:
        """Poll until the manifest is ready; bounded by ``max_poll_s``."""
        started = self._clock()
        waited = 0.0  # counted as well as measured, so an injected sleep is bounded too
        polls = 0
        while True:
            response = self.http.request("GET", status_url, allow_statuses=ERROR_STATUSES)
            polls += 1
            status = response.status_code
            if status == HTTP_OK:
                manifest = parse_json_object(response)
                logger.info(
                    "bulk export complete",
                    extra={"count": len(manifest.get("output") or []), "attempt": polls},
                )
                return manifest
            if status >= CLIENT_ERROR_MIN and status != HTTP_TOO_MANY_REQUESTS:
                text = outcome_text(response)
                if not _is_transient_outcome(response):
                    raise BulkExportError(
                        f"$export job failed with HTTP {status}" + (f": {text}" if text else ""),
                        url=url_path(status_url),
                        status_code=status,
                        outcome=text,
                    )
            elif status != HTTP_ACCEPTED:
                raise BulkExportError(
                    f"$export status answered HTTP {status}",
                    url=url_path(status_url),
                    status_code=status,
                )
            delay = parse_retry_after(response.headers.get("Retry-After"))
            if delay is None:
                delay = self.options.poll_interval_s
            elapsed = max(waited, self._clock() - started)
            if elapsed + delay > self.options.max_poll_s:
                raise BulkExportError(
                    f"$export job not complete after {self.options.max_poll_s:.0f}s",
                    url=url_path(status_url),
                )
            logger.debug(
                "bulk export in progress",
                extra={"status": (response.headers.get("X-Progress") or "")[:80], "delay_s": delay},
            )
            self._sleep(delay)
            waited += delay

    def delete(self, status_url: str) -> None:
        """Tell the server we are done with the job (its files may be removed)."""
        try:
            self.http.request("DELETE", status_url, allow_statuses=ERROR_STATUSES)
        except ConnectorError:
            logger.warning("bulk export job delete failed", extra={"path": url_path(status_url)})

    def lines(
        self, url: str, *, requires_token: bool, start_byte: int = 0
    ) -> Iterator[tuple[bytes, int]]:
        """``(line, end_offset)`` of one output file, from ``start_byte``."""
        return self.http.stream_lines(
            url,
            headers={"Accept": NDJSON},
            auth=None if requires_token else no_auth,  # files may be on object storage
            start_byte=start_byte,
        )

    def manifest_if_ready(self, status_url: str) -> dict[str, Any] | None:
        """The manifest of a finished job still on the server, else None (expired, deleted)."""
        response = self.http.request("GET", status_url, allow_statuses=ERROR_STATUSES)
        if response.status_code != HTTP_OK:
            return None
        return parse_json_object(response)


def _is_transient_outcome(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    issues = body.get("issue") if isinstance(body, dict) else None
    return isinstance(issues, list) and any(
        isinstance(i, dict) and i.get("code") == TRANSIENT_ISSUE_CODE for i in issues
    )


def _deleted_ids(bundle: dict[str, Any], resource_type: str) -> list[str]:
    """Ids from a ``deleted`` file's Bundle (entries with ``request`` DELETE ``Type/id``)."""
    ids = []
    for entry in bundle.get("entry") or []:
        request = entry.get("request") if isinstance(entry, dict) else None
        url = request.get("url") if isinstance(request, dict) else None
        if isinstance(url, str) and url.startswith(f"{resource_type}/"):
            ids.append(url.split("/", 2)[1])
    return ids


class BulkExportSource(RestSource):
    """One ``$export`` per stream, for that resource type, since the stored ``transactionTime``.

    A mid-pass cursor names the job's status URL, the output file and the byte
    offset reached, so a caller that stops after any page resumes the same job
    (with a ``Range`` request) instead of starting a new export. If the job is gone
    by then, a new export starts from the pass's ``_since``. The job is deleted
    when its last page is ready, or when it failed.
    """

    def __init__(
        self,
        config: SourceConfig,
        options: SourceOptions,
        http: FhirHttp,
        *,
        sleep: Sleep = time.sleep,
    ) -> None:
        super().__init__(config, options, http)
        self.client = BulkExportClient(http, options, sleep=sleep)

    def stream(self, resource_type: str, cursor: str | None = None) -> Iterator[Page]:
        for page in self.stream_lines(resource_type, cursor):
            yield decode_lines(page)

    def stream_lines(self, resource_type: str, cursor: str | None = None) -> Iterator[Page]:
        """The export's pages with their output lines undecoded (:attr:`Page.lines`);
        :meth:`stream` decodes them (:func:`connectors.ndjson.decode_lines`)."""
        start = decode_cursor(cursor)
        resume = start.resume or {}
        status_url = resume.get("job") if isinstance(resume.get("job"), str) else None
        manifest = self.client.manifest_if_ready(status_url) if status_url else None
        if manifest is None:
            resume = {}
            status_url = self.client.kick_off([resource_type], start.since_param)
            try:
                manifest = self.client.wait(status_url)
            except ConnectorError:
                self.client.delete(status_url)  # a retry starts a new job: this one is orphaned
                raise
        assert status_url is not None
        next_since = parse_instant(manifest.get("transactionTime"))
        if next_since is None:
            self.client.delete(status_url)
            raise BulkExportError("manifest has no valid transactionTime", url=url_path(status_url))
        requires_token = bool(manifest.get("requiresAccessToken", True))
        yield from self._outputs(manifest, resource_type, start, status_url, resume, requires_token)
        outcomes = list(self._error_outcomes(manifest, requires_token))
        deleted = list(self._deleted(manifest, resource_type, requires_token))
        self.client.delete(status_url)  # before the last yield: the caller may stop right after it
        yield Page(
            resource_type, [], Cursor(since=next_since).encode(), deleted=deleted, outcomes=outcomes
        )

    def _files(self, manifest: dict[str, Any], key: str) -> list[dict[str, Any]]:
        files = manifest.get(key) or []
        return [f for f in files if isinstance(f, dict) and isinstance(f.get("url"), str)]

    def _outputs(
        self,
        manifest: dict[str, Any],
        resource_type: str,
        start: Cursor,
        status_url: str,
        resume: dict[str, Any],
        requires_token: bool,
    ) -> Iterator[Page]:
        outputs = [
            f for f in self._files(manifest, "output") if f.get("type") in (None, resource_type)
        ]
        first_file = int(resume.get("file") or 0)
        page: list[RawLine] = []
        for index in range(first_file, len(outputs)):
            item = outputs[index]
            offset = int(resume.get("offset") or 0) if index == first_file else 0
            line = int(resume.get("line") or 0) if index == first_file else 0
            where = url_path(item["url"]).rsplit("/", 1)[-1]
            lines = self.client.lines(item["url"], requires_token=requires_token, start_byte=offset)
            for raw, end in lines:
                line += 1
                if not raw.strip():
                    continue
                page.append((raw, where, line))
                if len(page) >= self.options.page_size:
                    state = {"job": status_url, "file": index, "offset": end, "line": line}
                    position = Cursor(since=start.since, resume=state)
                    yield Page(resource_type, [], position.encode(), lines=page)
                    page = []
            if page:
                state = {"job": status_url, "file": index + 1, "offset": 0, "line": 0}
                position = Cursor(since=start.since, resume=state)
                yield Page(resource_type, [], position.encode(), lines=page)
                page = []

    def _error_outcomes(
        self, manifest: dict[str, Any], requires_token: bool
    ) -> Iterator[dict[str, Any]]:
        for item in self._files(manifest, "error"):
            where = url_path(item["url"]).rsplit("/", 1)[-1]
            lines = self.client.lines(item["url"], requires_token=requires_token)
            for number, (raw, _) in enumerate(lines, start=1):
                resource, outcome = parse_line(raw, where, number)
                found = resource if resource is not None else outcome
                if found is not None:
                    yield found

    def _deleted(
        self, manifest: dict[str, Any], resource_type: str, requires_token: bool
    ) -> Iterator[str]:
        for item in self._files(manifest, "deleted"):
            where = url_path(item["url"]).rsplit("/", 1)[-1]
            lines = self.client.lines(item["url"], requires_token=requires_token)
            for number, (raw, _) in enumerate(lines, start=1):
                bundle, _ = parse_line(raw, where, number)
                if bundle is not None:
                    yield from _deleted_ids(bundle, resource_type)
