"""Match features: the parts of a :class:`~fhir_mapping.model.SourcePatient` that matching reads.

``fhir_mapping`` has already folded, transliterated and normalized everything
(https://hl7.org/fhir/R4/patient.html); this module only picks the values out and adds the
phonetic codes, so that comparing two records is a handful of set and string operations.

The features of each stored Patient are also kept, encoded, in ``source_record.match_features``
(:func:`encode_features`, :func:`decode_features`): a candidate's features are then read from
a few hundred bytes instead of being extracted again from its ~1.6 KB normalized JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

import orjson

from fhir_mapping import SourcePatient, nickname_keys, phonetic_key

#: Identifier kinds that name one person for life: two different values of the same
#: system mean two different people (a guard vetoes the auto-link).
STRONG_IDENTIFIER_KINDS = frozenset({"ssn", "national-id", "passport", "drivers-license"})
#: Identifier kinds that are compared as evidence (same system only) but never veto.
EVIDENCE_IDENTIFIER_KINDS = frozenset({"member-id", "other"})


@dataclass(frozen=True, slots=True)
class NameFeatures:
    """One name of a record, ready to compare."""

    given: str  # all given names folded, joined by one space
    given_first: str
    given_tokens: frozenset[str]
    given_keys: frozenset[str]  # nickname-equivalence keys of the first given name
    given_phonetic: str
    family: str
    family_variants: frozenset[str]  # folded + alternates (umlaut spellings, run together)
    family_tokens: frozenset[str]
    family_phonetic: str
    suffix: str | None


@dataclass(frozen=True, slots=True)
class MatchFeatures:
    """Everything a comparison or a guard looks at, for one source record."""

    names: tuple[NameFeatures, ...]
    birth_date: str | None  # YYYYMMDD when complete
    birth_year: int | None
    birth_month: int | None
    birth_day: int | None
    gender: str | None
    phones: frozenset[str]
    emails: frozenset[str]
    ssns: frozenset[str]
    #: (system, value) of strong identifiers other than SSN.
    strong_ids: frozenset[tuple[str, str]]
    #: (system, value) of other identifiers (member ids, unknown systems), MRNs excluded.
    other_ids: frozenset[tuple[str, str]]
    mrns: frozenset[tuple[str, str]]
    #: (line, postal code, city) of each address.
    addresses: tuple[tuple[str, str, str], ...]

    @property
    def suffix(self) -> str | None:
        return next((n.suffix for n in self.names if n.suffix), None)


# A frozen dataclass's __init__ sets each field through object.__setattr__ (a global, an
# attribute lookup and a generic setattr per field); the features decoded for a pass's
# candidates (110k decodes at 25k Patients) and those extracted are built by setting the
# slots directly instead. Process time per record, the old module and this one
# interleaved in one process: decode_features 22.0 -> 17.8 us (the 2090 stored features
# of a 2k ingest; the empty sets of phones, emails and SSNs are shared too),
# extract_features 30.7 -> 24.2 us (1246 generated Patients). The objects are the same
# (equal, same hash and repr; neither class has a __post_init__): tests/mpi/test_hb_decode.py.
_new = object.__new__
(
    _set_given,
    _set_given_first,
    _set_given_tokens,
    _set_given_keys,
    _set_given_phonetic,
    _set_family,
    _set_family_variants,
    _set_family_tokens,
    _set_family_phonetic,
    _set_suffix,
) = (NameFeatures.__dict__[f.name].__set__ for f in fields(NameFeatures))
(
    _set_names,
    _set_birth_date,
    _set_birth_year,
    _set_birth_month,
    _set_birth_day,
    _set_gender,
    _set_phones,
    _set_emails,
    _set_ssns,
    _set_strong_ids,
    _set_other_ids,
    _set_mrns,
    _set_addresses,
) = (MatchFeatures.__dict__[f.name].__set__ for f in fields(MatchFeatures))


def _new_name(
    given: str,
    given_first: str,
    given_tokens: frozenset[str],
    given_keys: frozenset[str],
    given_phonetic: str,
    family: str,
    family_variants: frozenset[str],
    family_tokens: frozenset[str],
    family_phonetic: str,
    suffix: str | None,
) -> NameFeatures:
    """``NameFeatures(...)`` with its slots set directly (see above)."""
    name = _new(NameFeatures)
    _set_given(name, given)
    _set_given_first(name, given_first)
    _set_given_tokens(name, given_tokens)
    _set_given_keys(name, given_keys)
    _set_given_phonetic(name, given_phonetic)
    _set_family(name, family)
    _set_family_variants(name, family_variants)
    _set_family_tokens(name, family_tokens)
    _set_family_phonetic(name, family_phonetic)
    _set_suffix(name, suffix)
    return name


def _new_features(
    names: tuple[NameFeatures, ...],
    birth_date: str | None,
    birth_year: int | None,
    birth_month: int | None,
    birth_day: int | None,
    gender: str | None,
    phones: frozenset[str],
    emails: frozenset[str],
    ssns: frozenset[str],
    strong_ids: frozenset[tuple[str, str]],
    other_ids: frozenset[tuple[str, str]],
    mrns: frozenset[tuple[str, str]],
    addresses: tuple[tuple[str, str, str], ...],
) -> MatchFeatures:
    """``MatchFeatures(...)`` with its slots set directly (see above)."""
    features = _new(MatchFeatures)
    _set_names(features, names)
    _set_birth_date(features, birth_date)
    _set_birth_year(features, birth_year)
    _set_birth_month(features, birth_month)
    _set_birth_day(features, birth_day)
    _set_gender(features, gender)
    _set_phones(features, phones)
    _set_emails(features, emails)
    _set_ssns(features, ssns)
    _set_strong_ids(features, strong_ids)
    _set_other_ids(features, other_ids)
    _set_mrns(features, mrns)
    _set_addresses(features, addresses)
    return features


def _name_features(name: Any) -> NameFeatures | None:
    return _name_from(
        name.given_folded,
        name.family_folded,
        name.given_canonical,
        name.family_alternates,
        name.family_tokens,
        name.suffix_normalized,
    )


def _name_from(
    given_list: list[str],
    family_folded: str | None,
    canonical: list[str],
    alternates: list[str],
    family_tokens: list[str],
    suffix: str | None,
) -> NameFeatures | None:
    given_folded = [g for g in given_list if g]
    family = family_folded or ""
    if not given_folded and not family:
        return None
    given = " ".join(given_folded)
    first = given_folded[0] if given_folded else ""
    keys = set(nickname_keys(first)) if first else set()
    keys.update(c for c in canonical[:1] if c)
    variants = {family, *alternates} - {""}
    tokens = set(family_tokens) or set(family.split())
    return _new_name(
        given=given,
        given_first=first,
        given_tokens=frozenset(given.split()),
        given_keys=frozenset(keys),
        given_phonetic=phonetic_key(first) if first else "",
        family=family,
        family_variants=frozenset(variants),
        family_tokens=frozenset(tokens),
        family_phonetic=phonetic_key(family) if family else "",
        suffix=suffix,
    )


def extract_features(patient: SourcePatient) -> MatchFeatures:
    """The match features of a mapped source Patient."""
    names = tuple(f for f in (_name_features(n) for n in patient.names) if f is not None)
    return _features(
        names,
        patient.birth_year,
        patient.birth_month,
        patient.birth_day,
        patient.gender,
        [(i.value_normalized, i.valid, i.system, i.kind) for i in patient.identifiers],
        [(t.system, t.value_normalized) for t in patient.telecom],
        [(a.line_normalized, a.postal_normalized, a.city_folded) for a in patient.addresses],
    )


def features_from_normalized(data: dict[str, Any]) -> MatchFeatures:
    """``extract_features(SourcePatient.from_dict(data))`` read straight from the stored
    ``source_record.normalized`` JSON, without building the record's dataclasses (a
    candidate is only compared; its record is parsed only when its golden record is
    rendered). A missing key takes the dataclass default, as ``from_dict`` does."""
    names = tuple(
        f
        for f in (
            _name_from(
                n.get("given_folded", []),
                n.get("family_folded", ""),
                n.get("given_canonical", []),
                n.get("family_alternates", []),
                n.get("family_tokens", []),
                n.get("suffix_normalized"),
            )
            for n in data.get("names", [])
        )
        if f is not None
    )
    return _features(
        names,
        data.get("birth_year"),
        data.get("birth_month"),
        data.get("birth_day"),
        data.get("gender"),
        [
            (
                i.get("value_normalized", ""),
                i.get("valid", True),
                i.get("system"),
                i.get("kind", "other"),
            )
            for i in data.get("identifiers", [])
        ],
        [(t.get("system"), t.get("value_normalized", "")) for t in data.get("telecom", [])],
        [
            (a.get("line_normalized", ""), a.get("postal_normalized", ""), a.get("city_folded", ""))
            for a in data.get("addresses", [])
        ],
    )


def _features(
    names: tuple[NameFeatures, ...],
    birth_year: int | None,
    birth_month: int | None,
    birth_day: int | None,
    gender: str | None,
    identifiers: list[tuple[str, bool, str | None, str]],
    telecom: list[tuple[str | None, str]],
    addresses: list[tuple[str, str, str]],
) -> MatchFeatures:
    complete = birth_year is not None and birth_month is not None and birth_day is not None
    birth = f"{birth_year:04d}{birth_month:02d}{birth_day:02d}" if complete else None
    ssns: set[str] = set()
    strong: set[tuple[str, str]] = set()
    other: set[tuple[str, str]] = set()
    mrns: set[tuple[str, str]] = set()
    for value, valid, system_or_none, kind in identifiers:
        if not value or not valid:
            continue
        system = system_or_none or ""
        if kind == "ssn":
            ssns.add(value)
        elif kind in STRONG_IDENTIFIER_KINDS:
            strong.add((system, value))
        elif kind == "mrn":
            mrns.add((system, value))
        else:
            other.add((system, value))
    phones = {value for system, value in telecom if system == "phone"}
    emails = {value for system, value in telecom if system == "email"}
    return _new_features(
        names=names,
        birth_date=birth,
        birth_year=birth_year,
        birth_month=birth_month,
        birth_day=birth_day,
        gender=gender if gender in ("male", "female") else None,
        phones=frozenset(phones - {""}),
        emails=frozenset(emails - {""}),
        ssns=frozenset(ssns),
        strong_ids=frozenset(strong),
        other_ids=frozenset(other),
        mrns=frozenset(mrns),
        addresses=tuple(a for a in addresses if a[0] or a[1] or a[2]),
    )


# --- the stored encoding ---------------------------------------------------------------

#: Version of the encoding written by :func:`encode_features`. Bump it whenever what
#: :func:`extract_features` returns for a record can change: a field of
#: :class:`MatchFeatures` or :class:`NameFeatures`, the extraction above, or what it calls
#: in ``fhir_mapping`` (``nickname_keys``, ``phonetic_key``). Stored features of another
#: version are not decoded (:func:`decode_features` returns None) and the reader extracts
#: them from ``source_record.normalized`` again, so a bump is safe without a migration;
#: such a record costs what every candidate cost before the column existed until a sync
#: writes it again (an unchanged resource is skipped). tests/mpi/test_hb_features.py
#: pins the fields and the encodings of hand-written records, and fails until the
#: version is bumped and a pin for it is added.
FEATURES_VERSION = 1
#: Leading hex digits of the record's content hash kept in the encoding: features stored
#: next to a ``normalized`` rewritten by a writer that did not rewrite them (its content
#: hash changed) are not decoded.
HASH_PREFIX = 16

_NONE: frozenset[Any] = frozenset()


def _hash_tag(content_hash: str | None) -> str:
    return (content_hash or "")[:HASH_PREFIX]


def _encode_name(name: NameFeatures) -> list[Any]:
    # Parts that the decoder rebuilds exactly are left out (None): given_tokens always,
    # given_first and family_tokens when they are the plain split, family in its variants.
    family = name.family
    return [
        name.given,
        None if name.given_first == name.given.split(" ", 1)[0] else name.given_first,
        sorted(name.given_keys),
        name.given_phonetic,
        family,
        sorted(name.family_variants - {family}),
        None if name.family_tokens == frozenset(family.split()) else sorted(name.family_tokens),
        name.family_phonetic,
        name.suffix,
    ]


def encode_features(features: MatchFeatures, content_hash: str | None = None) -> str:
    """``features`` as the compact text of ``source_record.match_features``: a JSON array
    headed by :data:`FEATURES_VERSION` and the record's content hash (its first
    :data:`HASH_PREFIX` digits), sets as sorted lists, nothing that
    :func:`decode_features` can rebuild (the birth date, tokens that are a plain split)."""
    f = features
    value = [
        FEATURES_VERSION,
        _hash_tag(content_hash),
        [_encode_name(n) for n in f.names],
        f.birth_year,
        f.birth_month,
        f.birth_day,
        f.gender,
        sorted(f.phones),
        sorted(f.emails),
        sorted(f.ssns),
        sorted(f.strong_ids),
        sorted(f.other_ids),
        sorted(f.mrns),
        f.addresses,
    ]
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # a lone surrogate: escaped by the standard encoder
        return json.dumps(value, separators=(",", ":"))


def _decode_name(n: list[Any]) -> NameFeatures:
    # Positional arguments: a frozen dataclass's keyword call costs a third more.
    given, given_first, given_keys, given_phonetic, family, variants, tokens, phonetic, suffix = n
    return _new_name(
        given,
        given.split(" ", 1)[0] if given_first is None else given_first,
        frozenset(given.split()),
        frozenset(given_keys),
        given_phonetic,
        family,
        frozenset((*variants, family)) if family else frozenset(variants),
        frozenset(family.split() if tokens is None else tokens),
        phonetic,
        suffix,
    )


def decode_features(text: str | None, content_hash: str | None = None) -> MatchFeatures | None:
    """The features :func:`encode_features` wrote for a record with ``content_hash``; None
    when there are none, or they are of another :data:`FEATURES_VERSION`, of another
    content hash, or malformed (the caller then extracts them from the normalized JSON)."""
    if not text:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:  # what the standard encoder wrote (see encode_features)
            value = json.loads(text)
        except ValueError:
            return None
    if not isinstance(value, list) or value[:1] != [FEATURES_VERSION]:
        return None
    try:
        _, tag, names, year, month, day, gender, phones, emails, ssns, strong, other, mrns, addr = (
            value
        )
        if tag != _hash_tag(content_hash):
            return None
        complete = year is not None and month is not None and day is not None
        return _new_features(
            tuple([_decode_name(n) for n in names]),
            f"{year:04d}{month:02d}{day:02d}" if complete else None,
            year,
            month,
            day,
            gender,
            _NONE if phones == [] else frozenset(phones),
            _NONE if emails == [] else frozenset(emails),
            _NONE if ssns == [] else frozenset(ssns),
            frozenset([(s, v) for s, v in strong]) if strong else _NONE,
            frozenset([(s, v) for s, v in other]) if other else _NONE,
            frozenset([(s, v) for s, v in mrns]) if mrns else _NONE,
            tuple([(line, postal, city) for line, postal, city in addr]),
        )
    except (TypeError, ValueError):
        return None
