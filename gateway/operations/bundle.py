"""Bundles: searchset and history, and the ``_elements`` subset of a resource.

https://hl7.org/fhir/R4/bundle.html, https://hl7.org/fhir/R4/search.html#elements
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from gateway.outcomes import issue, operation_outcome

#: https://hl7.org/fhir/R4/v3/ObservationValue/cs.html#v3-ObservationValue-SUBSETTED
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
#: Elements kept by ``_elements`` whatever is asked (https://hl7.org/fhir/R4/search.html#elements).
MANDATORY_ELEMENTS = ("resourceType", "id", "meta")


def page_url(base: str, path: str, params: Sequence[tuple[str, str]]) -> str:
    query = urlencode(list(params))
    return f"{base}/fhir/{path}" + (f"?{query}" if query else "")


def match_entry(base: str, resource: dict[str, Any], mode: str = "match") -> dict[str, Any]:
    return {
        "fullUrl": f"{base}/fhir/{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "search": {"mode": mode},
    }


def ignored_entry(ignored: Sequence[str]) -> dict[str, Any]:
    """The ``search.mode = outcome`` entry that tells which parameters a lenient search
    did not apply (https://hl7.org/fhir/R4/search.html#errors): a client that does not
    read the self link still learns that its result is wider than it asked."""
    issues = [
        issue(
            "not-supported",
            f"Search parameter {name} is not supported here and was ignored.",
            severity="warning",
            expression=name,
        )
        for name in dict.fromkeys(ignored)
    ]
    return {"resource": operation_outcome(issues), "search": {"mode": "outcome"}}


def searchset(
    entries: list[dict[str, Any]],
    *,
    self_url: str,
    next_url: str | None = None,
    total: int | None = None,
    ignored: Sequence[str] = (),
) -> dict[str, Any]:
    """A searchset Bundle; ``ignored``: the parameters a lenient search did not apply."""
    if ignored:
        entries = [*entries, ignored_entry(ignored)]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle


def disclosed(bundle: dict[str, Any]) -> dict[str, list[str]]:
    """What a searchset disclosed, for its audit row: ``ids`` of its matches and, when it
    has any, ``included`` (``Type/id``) of what its ``_include``/``_revinclude`` added."""
    found: dict[str, list[str]] = {"ids": []}
    for entry in bundle.get("entry", ()):
        mode, resource = entry.get("search", {}).get("mode"), entry["resource"]
        if mode == "match":
            found["ids"].append(resource["id"])
        elif mode == "include":
            found.setdefault("included", []).append(f"{resource['resourceType']}/{resource['id']}")
    return found


def every_match(base: str, resources: Sequence[dict[str, Any]], *, self_url: str) -> dict[str, Any]:
    """A searchset of all ``resources`` in one page (a search short enough not to page)."""
    return searchset(
        [match_entry(base, r) for r in resources], self_url=self_url, total=len(resources)
    )


def subset(resource: dict[str, Any], elements: Sequence[str]) -> dict[str, Any]:
    """The resource with only ``elements`` (plus the mandatory ones), tagged SUBSETTED."""
    if not elements:
        return resource
    keep = set(elements) | set(MANDATORY_ELEMENTS)
    out = {k: v for k, v in resource.items() if k in keep}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out
