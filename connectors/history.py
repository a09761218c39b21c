"""History source: ``[base]/<type>/_history?_since=``, for servers without ``_lastUpdated`` search.

A history Bundle lists versions newest first (https://hl7.org/fhir/R4/http.html#history);
an entry whose ``request.method`` is ``DELETE`` (or that has no resource) is a
deletion and comes out in ``Page.deleted``. Only the newest version of each
resource in one run is delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from connectors.config import Page, as_object
from connectors.cursor import CursorTracker, last_updated, parse_instant, resource_key
from connectors.paginate import BundleNextLinkPaginator, next_link
from connectors.source import RestSource, decode_cursor

logger = logging.getLogger(__name__)


def _entry_identity(entry: dict[str, Any], resource_type: str) -> str | None:
    """The resource id an entry is about, from its resource, request.url or fullUrl."""
    resource = entry.get("resource")
    if isinstance(resource, dict) and isinstance(resource.get("id"), str):
        return str(resource["id"])
    request = as_object(entry.get("request"))
    for url in (request.get("url"), entry.get("fullUrl")):
        if isinstance(url, str) and f"{resource_type}/" in url:
            tail = url.split(f"{resource_type}/", 1)[1]
            rid = tail.split("/", 1)[0].split("?", 1)[0]
            if rid:
                return rid
    return None


def _etag_version(entry: dict[str, Any]) -> str:
    response = as_object(entry.get("response"))
    etag = response.get("etag") or ""
    return str(etag).removeprefix("W/").strip('"')


def _entry_stamp(entry: dict[str, Any]) -> datetime | None:
    resource = entry.get("resource")
    if isinstance(resource, dict) and last_updated(resource) is not None:
        return last_updated(resource)
    response = as_object(entry.get("response"))
    return parse_instant(response.get("lastModified"))


class HistorySource(RestSource):
    """Type-level ``_history`` with ``_since``; deletions become ``Page.deleted``.

    History is newest first, so a mid-pass cursor cannot be a position: it lists
    the keys delivered in the pass, and resuming re-reads the pass and skips them
    (pages with nothing new are not yielded, except the last).
    """

    def stream(self, resource_type: str, cursor: str | None = None) -> Iterator[Page]:
        start = decode_cursor(cursor)
        tracker = CursorTracker(start, self.options.overlap_s)
        params = [("_count", str(self.options.page_size))]
        if start.since_param:
            params.insert(0, ("_since", start.since_param))
        # resources whose newest version this pass already handled (older ones are stale)
        handled = {key.split("/")[1] for key in tracker.delivered_in_pass() if key.count("/") >= 2}
        pages = 0
        for bundle in BundleNextLinkPaginator(self.http, f"{resource_type}/_history", params):
            resources: list[dict[str, Any]] = []
            deleted: list[str] = []
            for entry in bundle.get("entry") or []:
                if not isinstance(entry, dict):
                    continue
                rid = _entry_identity(entry, resource_type)
                stamp = _entry_stamp(entry)
                if rid is not None and rid in handled:
                    tracker.observe(stamp)
                    continue
                if rid is not None:
                    handled.add(rid)
                resource = entry.get("resource")
                request = as_object(entry.get("request"))
                if request.get("method") == "DELETE" or not isinstance(resource, dict):
                    key = f"{resource_type}/{rid}/deleted-{_etag_version(entry)}"
                    if rid is not None and tracker.admit(key, stamp):
                        deleted.append(rid)
                elif tracker.admit(resource_key(resource), stamp):
                    resources.append(resource)
            if next_link(bundle) is None:
                pages += 1
                yield Page(resource_type, resources, tracker.final().encode(), deleted=deleted)
            elif resources or deleted:
                pages += 1
                position = tracker.position({"history": True}, with_delivered=True)
                yield Page(resource_type, resources, position.encode(), deleted=deleted)
        logger.info(
            "connector history stream finished",
            extra={"resource_type": resource_type, "pages": pages},
        )
