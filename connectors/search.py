"""FHIR REST search source: incremental ``_lastUpdated`` searches.

``GET [base]/Patient?_lastUpdated=ge<since>&_count=N&_sort=_lastUpdated`` then
``Bundle.link[next]`` verbatim (https://hl7.org/fhir/R4/search.html). Encounters
come either from the same type-level search or, with the ``patient-scoped``
vendor profile (servers in the style of Epic and Oracle Health, which refuse an
Encounter search without a patient), from ``Encounter?patient=<id>`` per Patient.

Every page's cursor can be resumed from (a caller may stop after any page):

* sorted by ``_lastUpdated`` (the default), a page's cursor is its position, the
  newest ``lastUpdated`` so far; resuming searches ``ge`` that instant and skips
  the keys already delivered at it. If the server turns out to ignore ``_sort``
  (an older ``lastUpdated`` after a newer one), the pass falls back to the
  unsorted way below;
* unsorted, a page's cursor lists the keys delivered so far in the pass;
  resuming re-runs the pass's search and skips them;
* patient-scoped, a page's cursor counts the Patients finished (and remembers
  the last one, to notice a listing that shifted: then the pass starts over).

Pages that bring nothing new are not yielded, except the last one of a pass,
which carries the cursor for the next run (newest ``lastUpdated`` minus the
overlap window).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from connectors.config import Page
from connectors.cursor import Cursor, CursorTracker, format_instant, last_updated
from connectors.paginate import BundleNextLinkPaginator, next_link, split_bundle
from connectors.source import RestSource, decode_cursor

logger = logging.getLogger(__name__)

PATIENT_SCOPED_TYPES = frozenset({"Encounter"})


class FhirSearchSource(RestSource):
    """Type-level ``_lastUpdated`` search, de-duplicated on (type, id, versionId)."""

    def stream(self, resource_type: str, cursor: str | None = None) -> Iterator[Page]:
        if (
            self.options.vendor_profile == "patient-scoped"
            and resource_type in PATIENT_SCOPED_TYPES
        ):
            yield from self._stream_patient_scoped(resource_type, cursor)
            return
        start = decode_cursor(cursor)
        resume = start.resume or {}
        tracker = CursorTracker(start, self.options.overlap_s)
        sorted_ok = self.options.sort and not resume.get("unsorted")
        after = resume.get("after") if sorted_ok else None
        params = self._search_params(after or start.since_param)
        previous: datetime | None = None
        pages = resources = 0
        for bundle in BundleNextLinkPaginator(self.http, resource_type, params):
            split = split_bundle(bundle)
            fresh = []
            for resource in split.resources:
                stamp = last_updated(resource)
                if sorted_ok and stamp is not None and previous is not None and stamp < previous:
                    sorted_ok = False
                    logger.warning(
                        "connector search is not sorted by _lastUpdated; resuming by keys",
                        extra={"resource_type": resource_type},
                    )
                previous = stamp or previous
                if tracker.admit_resource(resource):
                    fresh.append(resource)
            resources += len(fresh)
            if next_link(bundle) is None:
                pages += 1
                yield Page(resource_type, fresh, tracker.final().encode(), outcomes=split.outcomes)
            elif fresh or split.outcomes:
                pages += 1
                position = self._position(tracker, sorted_ok)
                yield Page(resource_type, fresh, position.encode(), outcomes=split.outcomes)
        logger.info(
            "connector stream finished",
            extra={"resource_type": resource_type, "pages": pages, "resources": resources},
        )

    @staticmethod
    def _position(tracker: CursorTracker, sorted_ok: bool) -> Cursor:
        if sorted_ok and tracker.newest is not None:
            return tracker.position({"after": format_instant(tracker.newest)}, with_delivered=False)
        return tracker.position({"unsorted": True}, with_delivered=True)

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

    def _remaining_patients(self, done: int, last: str | None) -> tuple[int, Iterator[str]]:
        """Patient ids after the first ``done``, if the listing still starts the same way."""
        ids = self.patient_ids()
        if not done:
            return 0, ids
        skipped: list[str] = []
        for patient_id in ids:
            skipped.append(patient_id)
            if len(skipped) == done:
                break
        if len(skipped) == done and skipped[-1] == last:
            return done, ids
        logger.warning("connector patient listing changed; the pass starts over")
        return 0, self.patient_ids()

    def _stream_patient_scoped(self, resource_type: str, cursor: str | None) -> Iterator[Page]:
        """``<type>?patient=<id>`` for every Patient, in the order the server lists them."""
        start = decode_cursor(cursor)
        resume = start.resume or {}
        tracker = CursorTracker(start, self.options.overlap_s)
        done, patients = self._remaining_patients(
            int(resume.get("patients_done") or 0), resume.get("last_patient")
        )
        last: Any = resume.get("last_patient") if done else None
        pages = 0
        for patient_id in patients:
            params = self._search_params(start.since_param, [("patient", patient_id)])
            for bundle in BundleNextLinkPaginator(self.http, resource_type, params):
                split = split_bundle(bundle)
                fresh = [r for r in split.resources if tracker.admit_resource(r)]
                if fresh or split.outcomes:
                    pages += 1
                    state = {"patients_done": done, "last_patient": last}
                    position = tracker.position(state, with_delivered=True)
                    yield Page(resource_type, fresh, position.encode(), outcomes=split.outcomes)
            done, last = done + 1, patient_id
            tracker.forget_delivered()  # this patient is finished; it is not searched again
        yield Page(resource_type, [], tracker.final().encode())
        logger.info(
            "connector patient-scoped stream finished",
            extra={"resource_type": resource_type, "count": done, "pages": pages},
        )
