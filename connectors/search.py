"""FHIR REST search source: incremental ``_lastUpdated`` searches.

``GET [base]/Patient?_lastUpdated=ge<since>&_count=N&_sort=_lastUpdated`` then
``Bundle.link[next]`` verbatim (https://hl7.org/fhir/R4/search.html). Encounters
come either from the same type-level search or, with the ``patient-scoped``
vendor profile (servers in the style of Epic and Oracle Health, which refuse an
Encounter search without a patient), from ``Encounter?patient=<id>`` per Patient.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from connectors.config import Page
from connectors.cursor import CursorTracker
from connectors.paginate import BundleNextLinkPaginator, split_bundle
from connectors.source import RestSource, decode_cursor

logger = logging.getLogger(__name__)

PATIENT_SCOPED_TYPES = frozenset({"Encounter"})


class FhirSearchSource(RestSource):
    """Type-level ``_lastUpdated`` search, de-duplicated on (type, id, versionId).

    With ``sort`` on (the default) results come oldest first, so every page carries
    a cursor that is safe to resume from. Without it, intermediate pages carry the
    starting cursor and only the last page moves it forward.
    """

    def stream(self, resource_type: str, cursor: str | None = None) -> Iterator[Page]:
        if (
            self.options.vendor_profile == "patient-scoped"
            and resource_type in PATIENT_SCOPED_TYPES
        ):
            yield from self._stream_patient_scoped(resource_type, cursor)
            return
        start = decode_cursor(cursor)
        tracker = CursorTracker(start, self.options.overlap_s)
        params = self._search_params(start.since_param)
        pages = resources = 0
        for bundle, is_last in _with_last(
            BundleNextLinkPaginator(self.http, resource_type, params)
        ):
            split = split_bundle(bundle)
            fresh = [r for r in split.resources if tracker.admit_resource(r)]
            pages += 1
            resources += len(fresh)
            progressive = self.options.sort or is_last
            yield Page(
                resource_type=resource_type,
                resources=fresh,
                cursor=tracker.encode() if progressive else cursor,
                outcomes=split.outcomes,
            )
        logger.info(
            "connector stream finished",
            extra={"resource_type": resource_type, "pages": pages, "resources": resources},
        )

    def _search_params(
        self, since: str | None, extra: list[tuple[str, str]] | None = None
    ) -> list[tuple[str, str]]:
        params = list(extra or [])
        if since:
            params.append(("_lastUpdated", f"ge{since}"))
        params.append(("_count", str(self.options.page_size)))
        if self.options.sort:
            params.append(("_sort", "_lastUpdated"))
        return params

    def patient_ids(self) -> Iterator[str]:
        """Every Patient id on the server, page by page."""
        params = [("_count", str(self.options.page_size)), ("_elements", "id")]
        for bundle in BundleNextLinkPaginator(self.http, "Patient", params):
            for resource in split_bundle(bundle).resources:
                if resource.get("resourceType") == "Patient" and isinstance(
                    resource.get("id"), str
                ):
                    yield resource["id"]

    def _stream_patient_scoped(self, resource_type: str, cursor: str | None) -> Iterator[Page]:
        """``<type>?patient=<id>`` for every Patient; the cursor moves on the last page only."""
        start = decode_cursor(cursor)
        tracker = CursorTracker(start, self.options.overlap_s)
        patients = pages = 0
        for patient_id in self.patient_ids():
            patients += 1
            params = self._search_params(start.since_param, [("patient", patient_id)])
            for bundle in BundleNextLinkPaginator(self.http, resource_type, params):
                split = split_bundle(bundle)
                fresh = [r for r in split.resources if tracker.admit_resource(r)]
                if fresh or split.outcomes:
                    pages += 1
                    yield Page(resource_type, fresh, cursor, outcomes=split.outcomes)
        yield Page(resource_type, [], tracker.encode())
        logger.info(
            "connector patient-scoped stream finished",
            extra={"resource_type": resource_type, "count": patients, "pages": pages},
        )


def _with_last(items: BundleNextLinkPaginator) -> Iterator[tuple[dict[str, Any], bool]]:
    """Pair each Bundle with whether it is the last one (it has no ``next`` link)."""
    for bundle in items:
        has_next = any(
            isinstance(link, dict) and link.get("relation") == "next"
            for link in bundle.get("link") or []
        )
        yield bundle, not has_next
