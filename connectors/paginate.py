"""Bundle paging: follow ``Bundle.link[next]`` exactly as the server wrote it.

Servers encode paging state in their own way (offsets, opaque tokens, signed
URLs), so a client must never build page URLs itself; see
https://hl7.org/fhir/R4/http.html#paging.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from connectors.config import as_object
from connectors.errors import MalformedPageError, PermanentError
from connectors.http import FhirHttp, url_path

logger = logging.getLogger(__name__)

ERROR_SEVERITIES = frozenset({"error", "fatal"})
#: Stop a paging loop after this many pages (about 100M resources at the default page size).
MAX_PAGES = 1_000_000


@dataclass
class BundleEntries:
    """A Bundle split into what a source passes on."""

    resources: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    notes: int = 0


def is_error_outcome(resource: dict[str, Any]) -> bool:
    """An OperationOutcome with at least one ``error`` or ``fatal`` issue."""
    return any(
        isinstance(issue, dict) and issue.get("severity") in ERROR_SEVERITIES
        for issue in resource.get("issue") or []
    )


def split_bundle(bundle: dict[str, Any]) -> BundleEntries:
    """Matches (and entries without ``search.mode``) become resources; ``outcome`` entries
    with an error become outcomes (warnings and information are only counted in
    ``notes``); ``include`` entries are dropped (we never ask for them)."""
    out = BundleEntries()
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict):
            out.skipped += 1
            continue
        out.entries.append(entry)
        resource = entry.get("resource")
        mode = as_object(entry.get("search")).get("mode", "match")
        if mode == "outcome" or (
            isinstance(resource, dict) and resource.get("resourceType") == "OperationOutcome"
        ):
            if isinstance(resource, dict) and is_error_outcome(resource):
                out.outcomes.append(resource)
            else:
                out.notes += 1
        elif mode == "include":
            continue
        elif isinstance(resource, dict):
            out.resources.append(resource)
        elif resource is not None:
            out.skipped += 1
    return out


def next_link(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


class BundleNextLinkPaginator:
    """Iterate the Bundles of a search or history: the first request, then ``next`` verbatim.

    A ``next`` link that points back at a page already fetched raises
    :class:`PermanentError` (the server is looping); a response that is not a
    Bundle raises :class:`MalformedPageError`.
    """

    def __init__(
        self,
        http: FhirHttp,
        url: str,
        params: list[tuple[str, str]] | None = None,
        *,
        max_pages: int = MAX_PAGES,
    ) -> None:
        self.http = http
        self.url = url
        self.params = params
        self.max_pages = max_pages

    def __iter__(self) -> Iterator[dict[str, Any]]:
        url: str | None = self.url
        params = self.params
        visited: set[str] = set()
        for _ in range(self.max_pages):
            if url is None:
                return
            _, bundle = self.http.get_json(url, params=params)
            if bundle.get("resourceType") != "Bundle":
                where = url_path(self.http.url(url))
                raise MalformedPageError(f"response from {where} is not a Bundle", url=where)
            yield bundle
            following = next_link(bundle)
            if following is not None:
                if following in visited:
                    raise PermanentError(
                        "Bundle next link repeats an earlier page", url=url_path(following)
                    )
                visited.add(following)
            url, params = following, None
        raise PermanentError(f"paging stopped after {self.max_pages} pages", url=self.url)
