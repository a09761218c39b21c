"""Patient search over the golden records (https://hl7.org/fhir/R4/patient.html#search).

Only active golden records are searched: a record merged into another is found
through its survivor (and still answers a read). Multi-valued parameters meet
the ``golden_search_token`` index built by :func:`fhir_mapping.search_tokens`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, Text, and_, cast, func, not_, or_, select
from sqlalchemy.orm import Session

from fhir_mapping.search import MAX_TOKEN_LENGTH, normalize_search_value
from gateway.operations.bundle import match_entry, page_url, searchset, shape
from gateway.operations.encounters import (
    REFERENCES_TO_PATIENT,
    encounters_of,
    patients_with_encounters,
)
from gateway.operations.json_tokens import HasElement, identifier_of_type
from gateway.operations.paging import decode_cursor, encode_cursor
from gateway.operations.params import (
    SearchRequest,
    criteria_only,
    fail,
    parse_date,
    parse_of_type,
    parse_search,
    parse_token,
    split_or,
)
from gateway.operations.sql import (
    SortColumn,
    after,
    date_condition,
    encode_value,
    missing_condition,
    not_in,
    order_by,
    partial_date_bounds,
    range_condition,
)
from store.models import GoldenPatient, GoldenSearchToken

GP = GoldenPatient
GST = GoldenSearchToken

#: Search parameters and the modifiers each accepts (https://hl7.org/fhir/R4/patient.html#search).
PATIENT_SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    "_id": ("token", "Logical id of the golden record"),
    "_lastUpdated": ("date", "When the golden record last changed"),
    "identifier": (
        "token",
        "Any identifier (system|value) from any linked source; :of-type=system|code|value"
        " by a coding of its type",
    ),
    "name": (
        "string",
        "Any part of any name (starts with, case and accent insensitive; with several"
        " words, each starts a part)",
    ),
    "family": (
        "string",
        "Family name (starts with, case and accent insensitive; with several words, each"
        " starts a family name)",
    ),
    "given": (
        "string",
        "Given name (starts with, case and accent insensitive; with several words, each"
        " starts a given name)",
    ),
    "birthdate": ("date", "Date of birth, with eq/ne/lt/le/gt/ge/sa/eb prefixes"),
    "gender": ("token", "administrative gender"),
    "phone": ("token", "Phone number (digits compared, punctuation ignored)"),
    "email": ("token", "Email address (case-insensitive)"),
    "telecom": ("token", "phone|value, email|value, or a value matching either"),
    "address": (
        "string",
        "Any part of any address: a line, the city, district, state, country, postal code"
        " or text (starts with, case and accent insensitive)",
    ),
    "address-postalcode": ("string", "Postal code (starts with, spaces ignored)"),
    "address-city": ("string", "City (starts with, case and accent insensitive)"),
    "address-state": ("string", "State or province (starts with, case and accent insensitive)"),
    "address-country": ("string", "Country (starts with, case and accent insensitive)"),
}
#: Modifiers (https://hl7.org/fhir/R4/search.html#modifiers) by parameter. A string's
#: ``:exact`` meets the folded index first, then the stored resource.
MODIFIERS = {
    "token": frozenset({"missing", "not"}),
    "string": frozenset({"missing", "contains", "exact"}),
    "date": frozenset({"missing"}),
}
SUPPORTED: dict[str, frozenset[str]] = {
    name: frozenset() if name.startswith("_") else MODIFIERS[kind]
    for name, (kind, _doc) in PATIENT_SEARCH_PARAMS.items()
}
SUPPORTED["identifier"] |= {"of-type"}
#: Parameters sorted on their indexed (folded) values: a record with several sorts by the
#: first of them in the order asked (https://hl7.org/fhir/R4/search.html#sort).
SORTED_BY_TOKENS = frozenset({"family", "given", "name"})
SORTABLE = frozenset({"_id", "_lastUpdated", "birthdate", "gender", *SORTED_BY_TOKENS})
#: ``_revinclude`` values -> the type they add.
REVINCLUDES = dict.fromkeys(
    (
        "Encounter:subject",
        "Encounter:patient",
        "Encounter:subject:Patient",
        "Encounter:patient:Patient",
    ),
    "Encounter",
)
#: ``_has`` (reverse chaining): the types whose references to a Patient it follows.
REVERSE = {"Encounter": REFERENCES_TO_PATIENT}
GENDERS = frozenset({"male", "female", "other", "unknown"})
TOKEN_PARAMS = ("identifier", "phone", "email")
STRING_PARAMS = (
    "name",
    "family",
    "given",
    "address",
    "address-postalcode",
    "address-city",
    "address-state",
    "address-country",
)
#: ContactPoint systems whose values are indexed, each under the parameter of its name.
TELECOM_SYSTEMS = ("phone", "email")
#: The indexed parameters ``address`` searches: its own tokens (lines, district, text)
#: and those of the address parts that have a parameter of their own.
ADDRESS_SEARCHES = ("address", "address-city", "address-state", "address-country")
POSTAL = "address-postalcode"
#: Parameters on people's names. A value of several words matches a record whose name
#: starts with it, or one each of whose words starts one of its names: ``name=ada
#: lovelace`` finds given "Ada" + family "Lovelace", ``given=mary ann`` given "Mary" +
#: "Ann" (R4 leaves what ``name`` matches to the server). Beyond :data:`MAX_NAME_WORDS`
#: words, only the whole value is looked for (each word is one more token subquery).
NAME_PARAMS = frozenset({"name", "family", "given"})
MAX_NAME_WORDS = 6
#: What ``:exact`` compares, as (array, element key, nested array of strings) in the
#: stored resource: a HumanName's family, given names and text; an Address's parts.
Place = tuple[str, str | None, str | None]
_EXACT_NAME: list[Place] = [
    ("name", "family", None),
    ("name", None, "given"),
    ("name", "text", None),
]
_EXACT_ADDRESS: dict[str, list[Place]] = {
    "address-city": [("address", "city", None)],
    "address-state": [("address", "state", None)],
    "address-country": [("address", "country", None)],
    "address-postalcode": [("address", "postalCode", None)],
}
EXACT: dict[str, list[Place]] = {
    "name": _EXACT_NAME,
    "family": _EXACT_NAME[:1],
    "given": _EXACT_NAME[1:2],
    **_EXACT_ADDRESS,
    "address": [
        ("address", None, "line"),
        ("address", "district", None),
        ("address", "text", None),
        *(place for places in _EXACT_ADDRESS.values() for place in places),
    ],
}

_SORT: dict[str, SortColumn] = {
    "_id": (GP.id, "str"),
    "_lastUpdated": (GP.last_updated, "dt"),
    "birthdate": (func.coalesce(GP.birth_date, ""), "str"),
    "gender": (func.coalesce(GP.gender, ""), "str"),
}


def _sort_column(param: str, desc: bool) -> SortColumn:
    """What ``_sort=param`` orders by. A string parameter: the record's smallest folded
    value ascending, its largest descending ("the item that comes earliest in the
    specified sort order"), so "Müller" sorts as "muller"; a record without one sorts
    as "" (first ascending, last descending, as a missing birth date does)."""
    if param not in SORTED_BY_TOKENS:
        return _SORT[param]
    pick = func.max if desc else func.min
    value = (
        select(pick(GST.value)).where(GST.golden_id == GP.id, GST.param == param).scalar_subquery()
    )
    return (func.coalesce(value, ""), "str")


@dataclass(frozen=True, slots=True)
class SearchContext:
    """What a search needs from the deployment: URLs, paging bounds, cursor secret."""

    base: str
    secret: str
    strict: bool
    default_count: int
    max_count: int


def _tokens(param: str, condition: ColumnElement[bool]) -> ColumnElement[bool]:
    return GP.id.in_(select(GST.golden_id).where(GST.param == param, condition))


def _token_condition(param: str, raw: str) -> ColumnElement[bool]:
    token = parse_token(raw)
    value = None
    if token.code is not None:
        value = normalize_search_value(param, token.code)
        if not value:
            raise fail(f"Parameter {param} has no searchable value.", param)
    token.require(param)
    return token_condition(param, token.system, value, no_system=token.no_system)


def token_condition(
    param: str, system: str | None, value: str | None, *, no_system: bool = False
) -> ColumnElement[bool]:
    """The golden records holding a token of ``param`` (``value`` already normalized;
    ``system`` None matches any system, unless ``no_system`` asks for none)."""
    clauses: list[ColumnElement[bool]] = []
    if value is not None:
        clauses.append(GST.value == value)
    if system is not None:
        clauses.append(GST.system == system)
    elif no_system:
        clauses.append(GST.system.is_(None))
    return _tokens(param, and_(*clauses))


def _telecom_condition(raw: str) -> ColumnElement[bool]:
    """``telecom``, a token on ContactPoint whose system is ``ContactPoint.system``
    (https://hl7.org/fhir/R4/search.html#token): ``phone|…`` and ``email|…`` match as
    ``phone`` and ``email`` do, ``phone|`` any phone, a bare value either kind."""
    token = parse_token(raw)
    if token.no_system or (token.system is not None and token.system not in TELECOM_SYSTEMS):
        raise fail(
            "telecom takes phone|value, email|value or a value: only phones and emails"
            " are indexed.",
            "telecom",
        )
    systems = (token.system,) if token.system is not None else TELECOM_SYSTEMS
    if token.code is None:
        return or_(*(_tokens(system, GST.param == system) for system in systems))
    values = [(system, normalize_search_value(system, token.code)) for system in systems]
    conditions = [token_condition(system, None, value) for system, value in values if value]
    if not conditions:
        raise fail("Parameter telecom has no searchable value.", "telecom")
    return or_(*conditions)


def _like(value: str, *, contains: bool) -> str:
    # Folded values are [a-z0-9 ] only, and postal codes are escaped: no LIKE wildcard
    # can be smuggled in.
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%" if contains else escaped + "%"


def _string_condition(param: str, raw: str, *, contains: bool) -> ColumnElement[bool]:
    """Starts with (https://hl7.org/fhir/R4/search.html#string), or anywhere with
    ``:contains``, on the folded values. ``address`` looks in the tokens of every part
    of an address (its postal codes in their own form); a name's words may each match
    a different name (:data:`NAME_PARAMS`)."""
    params = ADDRESS_SEARCHES if param == "address" else (param,)
    folded = normalize_search_value(params[0], raw)[:MAX_TOKEN_LENGTH]
    postal = normalize_search_value(POSTAL, raw)[:MAX_TOKEN_LENGTH] if param == "address" else ""
    if not folded and not postal:
        raise fail(f"Parameter {param} has no searchable characters.", param)
    clauses = []
    if folded:
        which = GST.param == param if len(params) == 1 else GST.param.in_(params)
        clauses.append(and_(which, GST.value.like(_like(folded, contains=contains), escape="\\")))
    if postal:
        clauses.append(
            and_(GST.param == POSTAL, GST.value.like(_like(postal, contains=contains), escape="\\"))
        )
    whole = GP.id.in_(select(GST.golden_id).where(or_(*clauses)))
    words = list(dict.fromkeys(folded.split())) if param in NAME_PARAMS else []
    if not 1 < len(words) <= MAX_NAME_WORDS:
        return whole
    each = [
        _tokens(param, GST.value.like(_like(word, contains=contains), escape="\\"))
        for word in words
    ]
    return or_(whole, and_(*each))


def _exact_condition(param: str, raw: str) -> ColumnElement[bool]:
    """``:exact``: the whole string, case and accents as given
    (https://hl7.org/fhir/R4/search.html#modifiers), in any of the elements
    :data:`EXACT` names. The folded index narrows first (an exact value starts with its
    own folded form; a name's text is indexed word by word, so its first word), and the
    stored resource decides."""
    narrowing = normalize_search_value(param, raw).split(" ", 1)[0] if param == "name" else raw
    return and_(
        _string_condition(param, narrowing, contains=False),
        or_(
            *(
                HasElement(GP.resource, array, raw if key is None else {key: raw}, nested)
                for array, key, nested in EXACT[param]
            )
        ),
    )


def _of_type_condition(raw: str) -> ColumnElement[bool]:
    """``identifier:of-type=system|code|value``: an identifier of that value whose type
    has that coding (``http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345``). The
    token index narrows by the value, the stored resource decides."""
    system, code, value = parse_of_type(raw, "identifier")
    indexed = normalize_search_value("identifier", value)[:MAX_TOKEN_LENGTH]
    typed = identifier_of_type(GP.resource, system, code, value)
    return and_(token_condition("identifier", None, indexed), typed)


def _present(name: str) -> ColumnElement[bool]:
    """The golden records with a value of ``name`` (what ``:missing`` asks about)."""
    if name == "birthdate":
        return GP.birth_date.is_not(None)
    if name == "gender":
        return GP.gender.is_not(None)
    if name in ("address", "telecom"):
        # An address with no indexed part is still an address, and a fax number (not
        # indexed) still a telecom: the stored resource tells.
        return HasElement(GP.resource, name, {})
    return _tokens(name, GST.param == name)


def _criterion(name: str, modifier: str | None, raw: str) -> ColumnElement[bool]:
    if name.startswith("_has:"):  # _has:Encounter:patient:status=finished
        param = name.split(":", 3)[3]
        return GP.id.in_(patients_with_encounters([(param, raw)], name))
    if modifier == "missing":
        return missing_condition(_present(name), raw, name)
    alternatives = split_or(raw)
    if not alternatives:
        raise fail(f"Parameter {name} needs a value.", name)
    if name == "gender":
        if not set(alternatives) <= GENDERS:
            raise fail("gender must be male, female, other or unknown.", "gender")
        return not_in(GP.gender, alternatives) if modifier == "not" else GP.gender.in_(alternatives)
    if modifier == "exact":
        return or_(*(_exact_condition(name, a) for a in alternatives))
    if modifier == "of-type":
        return or_(*(_of_type_condition(a) for a in alternatives))
    condition = _matching(name, alternatives, contains=modifier == "contains")
    # :not on a token: none of the values, which includes having none at all; the
    # subqueries select non-null golden ids, so NOT IN is exact.
    return not_(condition) if modifier == "not" else condition


def _matching(name: str, alternatives: list[str], *, contains: bool) -> ColumnElement[bool]:
    if name == "_id":
        return GP.id.in_(alternatives)
    if name == "birthdate":
        low, high = partial_date_bounds(GP.birth_date)
        return or_(*(range_condition(low, high, parse_date(a, name)) for a in alternatives))
    if name == "_lastUpdated":
        return or_(
            *(
                date_condition(GP.last_updated, parse_date(a, name), as_date=False)
                for a in alternatives
            )
        )
    if name in TOKEN_PARAMS:
        return or_(*(_token_condition(name, a) for a in alternatives))
    if name == "telecom":
        return or_(*(_telecom_condition(a) for a in alternatives))
    return or_(*(_string_condition(name, a, contains=contains) for a in alternatives))


def _filtered(request: SearchRequest, columns: Sequence[Any]) -> Select[Any]:
    stmt = select(*columns).where(GP.status == "active")
    for name, modifier, raw in request.criteria:
        stmt = stmt.where(_criterion(name, modifier, raw))
    return stmt


def patient_filter(items: Sequence[tuple[str, str]]) -> ColumnElement[bool]:
    """The golden records a Patient search with these criteria finds (active ones), as a
    condition on ``golden_patient.id`` (a ``_typeFilter``); 400 on an unknown or invalid
    parameter."""
    return GP.id.in_(matching_patients(items, "_typeFilter"))


def matching_patients(items: Sequence[tuple[str, str]], where: str) -> Select[Any]:
    """The ids of the golden records a Patient search with these criteria finds (active
    ones); 400, naming ``where``, for anything else than a valid criterion."""
    criteria_only(items, where)
    request = parse_search(
        items,
        SUPPORTED,
        sortable=SORTABLE,
        reverse=REVERSE,
        strict=True,
        default_count=1,
        max_count=1,
    )
    return _filtered(request, [GP.id])


def search_patients(
    session: Session, items: Sequence[tuple[str, str]], ctx: SearchContext
) -> dict[str, Any]:
    """A searchset Bundle for the query ``items``; 400 on an invalid parameter."""
    request = parse_search(
        items,
        SUPPORTED,
        sortable=SORTABLE,
        revincludes=frozenset(REVINCLUDES),
        reverse=REVERSE,
        strict=ctx.strict,
        default_count=ctx.default_count,
        max_count=ctx.max_count,
    )
    self_url = page_url(ctx.base, "Patient", request.used_params())
    total = None
    if request.counted:
        counting = select(func.count()).select_from(_filtered(request, [GP.id]).subquery())
        total = int(session.scalar(counting) or 0)
    if request.summary_count:
        return searchset([], self_url=self_url, total=total, ignored=request.ignored)
    sort = [(_sort_column(p, desc), desc) for p, desc in request.sort if p != "_id"]
    id_desc = next((desc for p, desc in request.sort if p == "_id"), False)
    sort.append((_SORT["_id"], id_desc))
    stmt = _filtered(
        request, [GP.id, cast(GP.resource, Text).label("text"), *(c[0] for c, _ in sort)]
    )
    if request.cursor is not None:
        stmt = stmt.where(after(sort, decode_cursor(ctx.secret, request.cursor).get("k") or []))
    rows = session.execute(stmt.order_by(*order_by(sort)).limit(request.count + 1)).all()
    page, more = rows[: request.count], len(rows) > request.count
    entries = [
        match_entry(ctx.base, shape(json.loads(r.text), request.elements, request.summary))
        for r in page
    ]
    if request.revinclude and page:
        entries.extend(
            match_entry(ctx.base, enc, "include")
            for enc in encounters_of(session, [r.id for r in page])
        )
    next_url = None
    if more:
        last = page[-1]
        key = [encode_value(v) for v in tuple(last)[2:]]
        token = encode_cursor(ctx.secret, {"k": key})
        next_url = page_url(ctx.base, "Patient", [*request.used_params(), ("_cursor", token)])
    return searchset(
        entries, self_url=self_url, next_url=next_url, total=total, ignored=request.ignored
    )
