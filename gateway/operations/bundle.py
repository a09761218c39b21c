"""Bundles: searchset and history, and a resource cut down by ``_elements`` or ``_summary``.

https://hl7.org/fhir/R4/bundle.html, https://hl7.org/fhir/R4/search.html#elements
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any
from urllib.parse import urlencode

from fhir.resources.R4B import get_fhir_model_class

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


def shape(
    resource: dict[str, Any], elements: Sequence[str] = (), summary: str | None = None
) -> dict[str, Any]:
    """The resource as ``_elements`` or ``_summary`` (``true``, ``text``, ``data``) ask:
    the top-level elements kept (with the mandatory ones, and each kept primitive's
    ``_name`` extension twin), tagged SUBSETTED; unchanged when neither is asked.

    ``_summary=true`` keeps the elements the FHIR definition marks as summary (read from
    the ``fhir.resources`` model), ``text`` the narrative and the elements of minimum
    cardinality 1, ``data`` everything but the narrative
    (https://hl7.org/fhir/R4/search.html#summary)."""
    if elements:
        keep = set(elements) | set(MANDATORY_ELEMENTS)
    elif summary in ("true", "text"):
        summary_elements, mandatory = _top_level(str(resource.get("resourceType")))
        keep = set(summary_elements) if summary == "true" else {"text", *mandatory}
    elif summary == "data":
        keep = set(resource) - {"text"}
    else:
        return resource
    out = {k: v for k, v in resource.items() if k in keep or (k[:1] == "_" and k[1:] in keep)}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out


@cache
def _top_level(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """The summary elements and the mandatory ones (minimum cardinality 1) of a type's top
    level, as JSON names (``class``, ``deceasedBoolean``), from its ``fhir.resources`` model."""
    summary, mandatory = set(MANDATORY_ELEMENTS), set(MANDATORY_ELEMENTS)
    for name, info in get_fhir_model_class(resource_type).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        key = info.alias or name
        if extra.get("summary_element_property"):
            summary.add(key)
        if info.is_required() or extra.get("element_required"):
            mandatory.add(key)
    return frozenset(summary), frozenset(mandatory)
