"""Search parameters: parsing and validation, independent of the web framework.

Implements the parts of `FHIR R4 search <https://hl7.org/fhir/R4/search.html>`_
askonce supports: ``date`` prefixes (eq ne lt le gt ge sa eb ap) on partial
dates and instants, ``token`` ``system|value``, comma for OR, repetition for
AND, ``_count`` bounds, ``_sort``, ``_summary``, ``_elements`` and the
``Prefer: handling=strict|lenient`` rule for parameters the server does not know
(https://hl7.org/fhir/R4/search.html#errors). Every error is a 400
OperationOutcome naming the parameter (never echoing its value: it can be PHI).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from gateway.outcomes import OutcomeError, bad_request

#: Parameters every search understands besides the resource's own.
CONTROL_PARAMS = frozenset(
    {
        "_count",
        "_sort",
        "_summary",
        "_elements",
        "_include",
        "_revinclude",
        "_format",
        "_cursor",
        "_total",
    }
)
DATE_PREFIXES = ("eq", "ne", "lt", "le", "gt", "ge", "sa", "eb", "ap")
#: https://hl7.org/fhir/R4/search.html#summary
SUMMARY_VALUES = frozenset({"true", "text", "data", "count", "false"})
#: https://hl7.org/fhir/R4/search.html#total: ``estimate`` is answered with the exact count
#: (an estimate may be exact), ``none`` with none, as a search without ``_total`` is.
TOTAL_VALUES = frozenset({"none", "estimate", "accurate"})
#: Search values longer than this are refused (the index keeps 255 characters).
MAX_VALUE_LENGTH = 255

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def fail(detail: str, parameter: str) -> OutcomeError:
    return OutcomeError(bad_request(detail, expression=parameter))


@dataclass(frozen=True, slots=True)
class DateRange:
    """A search value as the half-open interval ``[low, high)`` it denotes, with its prefix."""

    prefix: str
    low: datetime
    high: datetime

    @property
    def low_date(self) -> str:
        return self.low.date().isoformat()

    @property
    def high_date(self) -> str:
        return self.high.date().isoformat()


def _add_months(value: datetime, months: int) -> datetime:
    year, month = divmod(value.month - 1 + months, 12)
    return value.replace(year=value.year + year, month=month + 1)


def parse_date(raw: str, parameter: str) -> DateRange:
    """``ge1970-03`` -> DateRange("ge", 1970-03-01, 1970-04-01); 400 when malformed."""
    prefix = raw[:2] if raw[:2] in DATE_PREFIXES else "eq"
    text = raw[2:] if raw[:2] in DATE_PREFIXES else raw
    match = _DATE.match(text)
    if match is None:
        raise fail(f"Parameter {parameter} is not a FHIR date, dateTime or instant.", parameter)
    parts = match.groupdict()
    try:
        if parts["H"] is not None and parts["tz"] is None and parts["S"] is not None:
            # A time without a zone is ambiguous; FHIR says one SHALL be given with seconds.
            raise ValueError("timezone")
        tz = UTC
        if parts["tz"] and parts["tz"] != "Z":
            sign = 1 if parts["tz"][0] == "+" else -1
            hours, minutes = parts["tz"][1:].split(":")
            tz = UTC if (hours, minutes) == ("00", "00") else _offset(sign, hours, minutes)
        low = datetime(
            int(parts["y"]),
            int(parts["m"] or 1),
            int(parts["d"] or 1),
            int(parts["H"] or 0),
            int(parts["M"] or 0),
            int(parts["S"] or 0),
            int((parts["f"] or "0").ljust(6, "0")[:6]),
            tzinfo=tz,
        ).astimezone(UTC)
    except ValueError as exc:
        raise fail(f"Parameter {parameter} is not a valid date.", parameter) from exc
    if parts["m"] is None:
        high = low.replace(year=low.year + 1)
    elif parts["d"] is None:
        high = _add_months(low, 1)
    elif parts["H"] is None:
        high = low + timedelta(days=1)
    elif parts["S"] is None:
        high = low + timedelta(minutes=1)
    elif parts["f"] is None:
        high = low + timedelta(seconds=1)
    else:
        high = low + timedelta(microseconds=1)
    return DateRange(prefix, low, high)


def parse_since(raw: str, parameter: str = "_since") -> datetime:
    """The instant of a ``_since`` (https://hl7.org/fhir/R4/http.html#history), without a
    prefix; a date stands for its first instant, UTC. 400 when malformed."""
    if raw[:2] in DATE_PREFIXES:
        raise fail(f"{parameter} takes an instant, without a prefix.", parameter)
    return parse_date(raw, parameter).low


def _offset(sign: int, hours: str, minutes: str) -> timezone:
    return timezone(sign * timedelta(hours=int(hours), minutes=int(minutes)))


@dataclass(frozen=True, slots=True)
class Token:
    """A token search value: ``system|code``, ``|code`` (no system), ``system|`` or ``code``."""

    system: str | None
    code: str | None
    #: True when the value said explicitly that the system must be absent (``|code``).
    no_system: bool = False

    def require(self, param: str) -> None:
        """400 unless the value says something: a system, a code, or ``|`` (no system)."""
        if self.code is None and self.system is None and not self.no_system:
            raise fail(f"Parameter {param} needs a system or a value.", param)


def parse_token(raw: str) -> Token:
    if "|" not in raw:
        return Token(None, raw)
    system, _, code = raw.partition("|")
    if not system:
        return Token(None, code or None, no_system=True)
    return Token(system, code or None)


def parse_of_type(raw: str, param: str) -> tuple[str, str, str]:
    """``:of-type`` (https://hl7.org/fhir/R4/search.html#token): ``system|code|value``,
    a coding of an identifier's type and the identifier's value, all three given."""
    parts = raw.split("|", 2)
    if len(parts) != 3 or not all(part.strip() for part in parts):
        raise fail(
            f"{param}:of-type takes system|code|value: a coding of the identifier's type"
            " and its value.",
            f"{param}:of-type",
        )
    return parts[0], parts[1], parts[2]


def split_or(raw: str) -> list[str]:
    r"""Comma-separated alternatives; ``\,`` is a literal comma."""
    parts = re.split(r"(?<!\\),", raw)
    return [p.replace("\\,", ",") for p in parts if p != ""]


@dataclass
class SearchRequest:
    """A search's parameters, validated against what the resource type supports."""

    #: (name, modifier, value) for each resource parameter occurrence.
    criteria: list[tuple[str, str | None, str]] = field(default_factory=list)
    count: int = 0
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (param, descending)
    summary_count: bool = False
    #: ``_summary`` of ``true``, ``text`` or ``data``: how each match is cut down.
    summary: str | None = None
    elements: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    revinclude: list[str] = field(default_factory=list)
    #: ``_total`` as asked (None: not asked); :attr:`counted` says whether it is given.
    total: str | None = None
    cursor: str | None = None
    #: Parameters ignored under lenient handling (reported, not applied).
    ignored: list[str] = field(default_factory=list)

    @property
    def counted(self) -> bool:
        """Whether the Bundle carries ``total``: ``_summary=count`` (or ``_count=0``), or
        ``_total`` of ``estimate`` or ``accurate``."""
        return self.summary_count or self.total in ("estimate", "accurate")

    def values(self, name: str) -> list[tuple[str | None, str]]:
        return [(mod, value) for n, mod, value in self.criteria if n == name]

    def used_params(self) -> list[tuple[str, str]]:
        """The applied parameters as (key, value) pairs, for the self and next links."""
        pairs = [(f"{n}:{m}" if m else n, v) for n, m, v in self.criteria]
        if self.sort:
            pairs.append(("_sort", ",".join(("-" if d else "") + p for p, d in self.sort)))
        if self.summary_count:
            pairs.append(("_summary", "count"))
        elif self.summary is not None:
            pairs.append(("_summary", self.summary))
        if self.elements:
            pairs.append(("_elements", ",".join(self.elements)))
        pairs.extend(("_include", r) for r in self.include)
        pairs.extend(("_revinclude", r) for r in self.revinclude)
        if self.total is not None:
            pairs.append(("_total", self.total))
        pairs.append(("_count", str(self.count)))
        return pairs


def criteria_only(items: Sequence[tuple[str, str]], where: str) -> None:
    """400 unless ``items`` are search criteria only (no paging, sorting or shaping): what
    a filter made of a search query, such as Bulk Data's ``_typeFilter``, can apply."""
    for key, _value in items:
        if key.partition(":")[0] in CONTROL_PARAMS:
            raise fail(f"{where} takes search criteria only, not {key}.", where)


def parse_search(
    items: Sequence[tuple[str, str]],
    supported: Mapping[str, frozenset[str]],
    *,
    sortable: frozenset[str],
    includes: frozenset[str] = frozenset(),
    revincludes: frozenset[str] = frozenset(),
    chains: Mapping[str, str] | None = None,
    reverse: Mapping[str, frozenset[str]] | None = None,
    strict: bool,
    default_count: int,
    max_count: int,
) -> SearchRequest:
    """Validate ``items`` (the query string) against ``supported`` {param: allowed modifiers}.

    Unknown parameters and modifiers raise 400 under ``strict`` handling and are
    ignored (listed in ``ignored``) otherwise. ``_count`` above ``max_count`` is
    capped (https://hl7.org/fhir/R4/search.html#count: the server may return fewer).
    ``chains``: reference parameters that take a chained parameter of their target type
    (``patient.identifier=…``, also ``patient:Patient.identifier``), each kept as the
    criterion ``patient.identifier``; the target's search judges the chained name.
    ``reverse``: the types whose references to this one ``_has`` follows {type: its
    reference parameters} (``_has:Encounter:patient:status=finished``), each kept whole as
    a criterion; the other type's search judges the parameter after the reference.
    """
    request = SearchRequest(count=default_count)
    for key, value in items:
        if reverse and key.startswith("_has:"):
            _reverse_chained(request, key, value, reverse)
            continue
        if chains and "." in key and _chained(request, key, value, chains):
            continue
        name, _, modifier = key.partition(":")
        if name in CONTROL_PARAMS:
            _apply_control(request, name, value, sortable, includes, revincludes, max_count)
            continue
        if name not in supported:
            if strict:
                raise fail(f"Unknown search parameter {key}.", key)
            request.ignored.append(key)
            continue
        if modifier and modifier not in supported[name]:
            # https://hl7.org/fhir/R4/search.html#modifiers: an unsupported modifier is
            # always rejected, because ignoring it would widen the result silently.
            raise fail(f"Unsupported modifier on search parameter {name}.", key)
        if value == "" or len(value) > MAX_VALUE_LENGTH:
            raise fail(f"Parameter {key} needs a value of 1 to 255 characters.", key)
        request.criteria.append((name, modifier or None, value))
    return _one_shape(request)


def _chained(request: SearchRequest, key: str, value: str, chains: Mapping[str, str]) -> bool:
    """Add ``key`` as a chained criterion (https://hl7.org/fhir/R4/search.html#chaining)
    when it chains one of ``chains`` {reference parameter: target type}; False if not."""
    link, _, chained = key.partition(".")
    reference, _, target = link.partition(":")
    if reference not in chains:
        return False
    if target and target != chains[reference]:
        raise fail(f"{reference} refers to a {chains[reference]} only.", key)
    if not chained or "." in chained or ":" in chained:
        raise fail(f"{key}: one chained parameter, without a modifier, is supported.", key)
    if value == "" or len(value) > MAX_VALUE_LENGTH:
        raise fail(f"Parameter {key} needs a value of 1 to 255 characters.", key)
    request.criteria.append((f"{reference}.{chained}", None, value))
    return True


def _reverse_chained(
    request: SearchRequest, key: str, value: str, reverse: Mapping[str, frozenset[str]]
) -> None:
    """Add ``_has:Type:reference:parameter`` as a criterion
    (https://hl7.org/fhir/R4/search.html#has), or 400."""
    _has, rtype, reference, param = [*key.split(":", 3), "", "", ""][:4]
    if rtype not in reverse or reference not in reverse[rtype] or not param:
        forms = ", ".join(f"_has:{t}:{r}:<parameter>" for t in reverse for r in sorted(reverse[t]))
        raise fail(f"_has supports {forms}.", key)
    if value == "" or len(value) > MAX_VALUE_LENGTH:
        raise fail(f"Parameter {key} needs a value of 1 to 255 characters.", key)
    request.criteria.append((key, None, value))


def _one_shape(request: SearchRequest) -> SearchRequest:
    if request.elements and request.summary is not None:
        raise fail("_summary and _elements cannot be combined.", "_summary")
    return request


def parse_shape(items: Sequence[tuple[str, str]], *, countable: bool = False) -> SearchRequest:
    """``_elements`` and ``_summary`` of a read or vread (the search's rules, without
    ``count``, which only a search, or a history (``countable``), can answer); every other
    parameter is left alone."""
    request = SearchRequest()
    for key, value in items:
        if key in ("_elements", "_summary"):
            _apply_control(request, key, value, frozenset(), frozenset(), frozenset(), 0)
    if request.summary_count and not countable:
        raise fail("_summary=count counts a search's matches; a read has none.", "_summary")
    return _one_shape(request)


def _apply_control(
    request: SearchRequest,
    name: str,
    value: str,
    sortable: frozenset[str],
    includes: frozenset[str],
    revincludes: frozenset[str],
    max_count: int,
) -> None:
    if name == "_count":
        if not value.isdigit():
            raise fail("_count must be a non-negative integer.", "_count")
        count = int(value)
        request.count = min(count, max_count)
        if count == 0:
            request.summary_count = True
    elif name == "_sort":
        request.sort = []
        for part in split_or(value):
            desc = part.startswith("-")
            param = part.lstrip("-")
            if param not in sortable:
                raise fail(f"_sort supports {', '.join(sorted(sortable))}.", "_sort")
            request.sort.append((param, desc))
    elif name == "_summary":
        if value not in SUMMARY_VALUES:
            raise fail("_summary supports true, text, data, count and false.", "_summary")
        request.summary_count = value == "count"
        request.summary = value if value in ("true", "text", "data") else None
    elif name == "_elements":
        elements = [e.strip() for e in value.split(",") if e.strip()]
        if not all(re.fullmatch(r"[a-zA-Z][a-zA-Z0-9]*", e) for e in elements):
            raise fail("_elements takes top-level element names.", "_elements")
        request.elements = elements
    elif name in ("_include", "_revinclude"):
        # ``_include:iterate`` asks for nothing more here: no included type has includes.
        allowed, chosen = (
            (includes, request.include) if name == "_include" else (revincludes, request.revinclude)
        )
        if value not in allowed:
            supported = ", ".join(sorted(allowed)) or "nothing"
            raise fail(f"{name} supports {supported}.", name)
        if value not in chosen:
            chosen.append(value)
    elif name == "_total":
        if value not in TOTAL_VALUES:
            raise fail("_total supports none, estimate and accurate.", "_total")
        request.total = value
    elif name == "_cursor":
        request.cursor = value
    # _format is content negotiation (handled by the router).
