"""A source's preflight: can askonce sync it as configured, before a sync is tried?

What an integration engineer checks by hand when connecting an EHR, in one call
(``askonce sources check NAME``, ``POST /admin/sources/{id}/check``):

* the server answers and takes the credentials (the CapabilityStatement is read, through
  the source's own auth, headers and TLS settings);
* it speaks FHIR R4 (an R5 server's Encounter has another shape: every one would be
  quarantined);
* each resource type the source syncs is offered the way its kind reads it:

  - ``fhir``: a type-level search, asked for ``_lastUpdated`` (the incremental cursor)
    and ``_sort=_lastUpdated`` (which makes a page resumable by its position). A server
    that drops a parameter it does not support says so in the search's ``self`` link
    (https://hl7.org/fhir/R4/search.html#errors); the probe reads it. The count asked for
    (``_summary=count``) tells how many resources the first sync will read;
  - ``history``: the type-level ``_history`` interaction, probed;
  - ``bulk``: ``$export`` at the source's level, from the CapabilityStatement only (a
    probe would start an export);
  - ``ndjson``: the folder and each type's files (their count and size).

Probes ask for one resource or a count and never print or log what comes back: a
finding names types, counts and parameters, never a value of a resource.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from connectors.config import Capabilities
from connectors.errors import AuthenticationError, ConnectorError, TransientError
from connectors.ndjson import NdjsonDirectorySource
from connectors.source import RestSource, Source
from connectors.topics import choose_topics, read_topics

logger = logging.getLogger(__name__)

Level = Literal["ok", "warning", "error"]
#: The FHIR versions askonce reads: R4 (4.0.x); R4B (4.3.x) shares its Patient and Encounter.
READ_VERSIONS = ("4.0", "4.3")
#: A ``_lastUpdated`` lower bound that every resource passes.
SINCE_EVER = "ge1900-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    #: What was checked: ``server``, ``fhirVersion`` or a resource type.
    subject: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "subject": self.subject, "message": self.message}


@dataclass
class Preflight:
    kind: str
    findings: list[Finding] = field(default_factory=list)
    #: Resources of each type the server counted (``fhir`` sources whose server counts).
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No error: a sync can run (warnings say how it will be slower or less exact)."""
        return not any(f.level == "error" for f in self.findings)

    def add(self, level: Level, subject: str, message: str) -> None:
        self.findings.append(Finding(level, subject, message))

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ok": self.ok,
            "findings": [f.as_dict() for f in self.findings],
            "counts": dict(self.counts),
        }


def preflight(source: Source) -> Preflight:
    """Check ``source`` as its kind will read it (see the module docstring); raises nothing
    for what the source answers: every failure is a finding."""
    report = Preflight(source.config.kind)
    if isinstance(source, NdjsonDirectorySource):
        _ndjson(source, report)
    elif isinstance(source, RestSource):
        _rest(source, report)
    else:  # pragma: no cover - every pulled kind is one of the two
        report.add("error", "server", f"no preflight for a {source.config.kind} source")
    logger.info(
        "source preflight",
        extra={"count": len(report.findings), "complete": report.ok},
    )
    return report


def _ndjson(source: NdjsonDirectorySource, report: Preflight) -> None:
    if not source.folder.is_dir():
        report.add("error", "server", f"the folder {source.folder} does not exist")
        return
    report.add("ok", "server", f"the folder {source.folder} is there")
    for resource_type in source.config.resource_types:
        files = source.files_for(resource_type)
        if not files:
            report.add(
                "warning",
                resource_type,
                f"no {resource_type}.ndjson (or {resource_type}.*.ndjson): nothing to sync",
            )
            continue
        size = sum(path.stat().st_size for path in files)
        report.add(
            "ok",
            resource_type,
            f"{len(files)} file{'s' if len(files) != 1 else ''}, {_size(size)}",
        )


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    scaled = float(size)
    for unit in ("KB", "MB", "GB"):
        scaled /= 1024
        if scaled < 1024 or unit == "GB":
            break
    return f"{scaled:.1f} {unit}"


def _failure(exc: ConnectorError | str) -> str:
    """What went wrong, for a finding: a probe's complaint, or the connector's error."""
    if isinstance(exc, str):
        return exc
    status = f" (HTTP {exc.status_code})" if exc.status_code else ""
    if isinstance(exc, AuthenticationError):
        return f"the credentials were refused{status}: {exc}"
    if isinstance(exc, TransientError):
        return (
            "the server could not be reached, did not answer in time, or is"
            f" overloaded{status}: {exc}"
        )
    return f"{exc}{status}"


def _rest(source: RestSource, report: Preflight) -> None:
    try:
        capabilities = source.check()
    except ConnectorError as exc:
        report.add("error", "server", _failure(exc))
        return
    software = f" ({capabilities.software})" if capabilities.software else ""
    report.add("ok", "server", f"answers, and took the credentials{software}")
    version = capabilities.fhir_version
    if not version:
        report.add("warning", "fhirVersion", "the CapabilityStatement does not say; R4 assumed")
    elif version.startswith(READ_VERSIONS):
        report.add("ok", "fhirVersion", version)
    else:
        report.add(
            "error",
            "fhirVersion",
            f"{version}: askonce reads FHIR R4 (4.0.x) and R4B (4.3.x); resources of"
            " another version would be quarantined",
        )
    for resource_type in source.config.resource_types:
        kind = source.config.kind
        if kind == "bulk":
            _bulk(source, capabilities, resource_type, report)
        elif kind == "history":
            _history(source, capabilities, resource_type, report)
        else:
            _search(source, capabilities, resource_type, report)
    _push(source, capabilities, report)


def _push(source: RestSource, capabilities: Capabilities, report: Preflight) -> None:
    """Whether ``askonce sources subscribe`` can ask this server to push, and with which
    topics (never an error: a sync pulls)."""
    if not capabilities.supports("Subscription"):
        report.add(
            "ok",
            "Subscription",
            "not offered: changes are pulled (push intake takes Subscriptions made elsewhere)",
        )
        return
    topics = sorted(capabilities.subscription_topics)
    report.add(
        "ok",
        "Subscription",
        f"offered, with {len(topics)} Subscriptions Backport topic(s): {', '.join(topics)}"
        if topics
        else "offered (classic R4 criteria; no Subscriptions Backport topic listed)",
    )
    if topics:
        _topics(source, capabilities, report)


def _topics(source: RestSource, capabilities: Capabilities, report: Preflight) -> None:
    """Which of the synced types a listed topic pushes every change of: what ``askonce
    sources subscribe`` chooses when it is not told (:mod:`connectors.topics`)."""
    try:
        definitions = read_topics(source)
    except ConnectorError as exc:
        report.add(
            "ok",
            "Subscription",
            f"the topics' definitions could not be read ({_failure(exc)}): name a topic"
            " with --topic, or subscribe gives each type a classic Subscription",
        )
        return
    types = list(source.config.resource_types)
    choice = choose_topics(definitions, types, capabilities.subscription_topics)
    parts = [f"{rtype} by the topic {url}" for rtype, url in choice.topics.items()]
    parts += [
        f"{rtype} by a classic Subscription (no listed topic pushes its every change)"
        for rtype in choice.uncovered
    ]
    report.add("ok", "Subscription", "subscribe without --topic: " + "; ".join(parts))


def _offered(
    capabilities: Capabilities,
    resource_type: str,
    interaction: str,
    report: Preflight,
    *,
    level: Level,
    missing: str,
) -> bool:
    """Whether to go on with ``resource_type``: the CapabilityStatement must list it (an
    error), and an interaction list without ``interaction`` is a finding of ``level``
    (a statement that lists none is taken at its word, which is no word)."""
    if not capabilities.supports(resource_type):
        report.add(
            "error", resource_type, f"the CapabilityStatement does not offer {resource_type}"
        )
        return False
    interactions = capabilities.resources[resource_type].interactions
    if interactions and interaction not in interactions:
        report.add(level, resource_type, missing)
        return level != "error"
    return True


def _search(
    source: RestSource, capabilities: Capabilities, resource_type: str, report: Preflight
) -> None:
    if not _offered(
        capabilities,
        resource_type,
        "search-type",
        report,
        level="warning",
        missing="the CapabilityStatement does not list search-type; trying it anyway",
    ):
        return
    if source.options.vendor_profile == "patient-scoped" and resource_type == "Encounter":
        if capabilities.supports_search_param("Encounter", "patient"):
            report.add("ok", resource_type, "searched per Patient (patient-scoped profile)")
        else:
            report.add(
                "warning",
                resource_type,
                "the patient-scoped profile searches Encounter?patient=, which the"
                " CapabilityStatement does not list",
            )
        return
    # _summary=count is optional for a server: one that refuses it is asked for one resource.
    counted = _probe(source, resource_type, [("_lastUpdated", SINCE_EVER), ("_summary", "count")])
    if isinstance(counted, ConnectorError) and not isinstance(counted, TransientError):
        counted = _probe(source, resource_type, [("_lastUpdated", SINCE_EVER), ("_count", "1")])
    if isinstance(counted, ConnectorError | str):
        report.add("error", resource_type, _failure(counted))
        return
    total, used = counted
    if total is not None:
        report.counts[resource_type] = total
    to_read = f": {total:,} to read" if total is not None else " (the server gives no count)"
    if used is not None and "_lastUpdated" not in used:
        report.add(
            "warning",
            resource_type,
            f"searchable{to_read}, but the server ignored _lastUpdated: every sync reads"
            " everything again (what did not change is skipped by its content hash)",
        )
    else:
        report.add("ok", resource_type, f"searchable by _lastUpdated{to_read}")
    if not source.options.sort:
        return
    sorted_probe = _probe(source, resource_type, [("_sort", "_lastUpdated"), ("_count", "1")])
    if isinstance(sorted_probe, ConnectorError | str):
        report.add(
            "warning",
            resource_type,
            f"a search sorted by _lastUpdated failed: {_failure(sorted_probe)}",
        )
    elif sorted_probe[1] is not None and "_sort" not in sorted_probe[1]:
        report.add(
            "warning",
            resource_type,
            "the server ignored _sort=_lastUpdated: an interrupted sync resumes by the"
            " keys it read (option sort=false says so up front)",
        )


Probed = tuple[int | None, set[str] | None]


def _probe(
    source: RestSource,
    path: str,
    params: list[tuple[str, str]],
    *,
    bundle_type: str = "searchset",
) -> Probed | ConnectorError | str:
    """GET ``path`` with ``params``: the Bundle's ``total`` and the parameters its ``self``
    link says were used (None when it has none); the error, or what was wrong with the
    answer, when it failed."""
    try:
        _status, bundle = source.http.get_json(path, params=params)
    except ConnectorError as exc:
        return exc
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != bundle_type:
        return f"{path} did not answer with a {bundle_type} Bundle"
    total = bundle.get("total")
    return (
        total if isinstance(total, int) and not isinstance(total, bool) else None,
        _self_params(bundle),
    )


def _self_params(bundle: dict[str, Any]) -> set[str] | None:
    for link in _links(bundle):
        if link.get("relation") == "self" and isinstance(link.get("url"), str):
            return {name for name, _ in parse_qsl(urlsplit(link["url"]).query)}
    return None


def _links(bundle: dict[str, Any]) -> Iterator[dict[str, Any]]:
    links = bundle.get("link")
    if isinstance(links, list):
        yield from (link for link in links if isinstance(link, dict))


def _history(
    source: RestSource, capabilities: Capabilities, resource_type: str, report: Preflight
) -> None:
    if not _offered(
        capabilities,
        resource_type,
        "history-type",
        report,
        level="error",
        missing=f"the CapabilityStatement does not offer {resource_type}/_history"
        " (history-type); a fhir source reads it by search instead",
    ):
        return
    found = _probe(source, f"{resource_type}/_history", [("_count", "1")], bundle_type="history")
    if isinstance(found, ConnectorError | str):
        report.add("error", resource_type, _failure(found))
        return
    total = found[0]
    if total is not None:
        report.counts[resource_type] = total
    versions = f": {total:,} versions" if total is not None else ""
    report.add("ok", resource_type, f"{resource_type}/_history answers{versions}")


def _bulk(
    source: RestSource, capabilities: Capabilities, resource_type: str, report: Preflight
) -> None:
    level = source.options.bulk_level
    scope = {"system": None, "patient": "Patient", "group": "Group"}[level]
    declared = capabilities.supports_operation("export", scope)
    where = f"{scope}/$export" if scope else "$export"
    if not capabilities.supports(resource_type):
        report.add(
            "warning",
            resource_type,
            f"the CapabilityStatement does not list {resource_type}; the export may hold none",
        )
    elif declared:
        report.add("ok", resource_type, f"exported through {where}")
    else:
        report.add(
            "warning",
            resource_type,
            f"the CapabilityStatement does not declare {where}; the first sync's kick-off"
            " will tell (servers often declare Bulk Data by instantiates only)",
        )
