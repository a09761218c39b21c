"""Search values of a Patient resource: what the FHIR search parameters match on.

``search_tokens`` extracts, from a Patient's FHIR JSON, one ``(param, system, value)``
per searchable value; ``normalize_search_value`` turns a value from a search URL into
the same form, so the two meet in an index (``golden_search_token``).
See https://hl7.org/fhir/R4/patient.html#search for the parameters.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any

from anyascii import anyascii

SearchToken = tuple[str, str | None, str]
#: Search values are indexed up to this many characters.
MAX_TOKEN_LENGTH = 255
#: Distinct strings whose folded form is memoized; names and cities repeat across records
#: (the repeating ones stay in the LRU; unique lines and names would only grow the process).
FOLD_CACHE_SIZE = 1 << 13

#: Address parts searched as strings (starts with, case- and accent-insensitive), by the
#: parameter that searches each.
ADDRESS_PARTS = {"city": "address-city", "state": "address-state", "country": "address-country"}
#: The other string parts of an Address, indexed under ``address`` (which also searches
#: the parts above and the postal code, https://hl7.org/fhir/R4/patient.html#search):
#: each line whole, the district, the text.
ADDRESS_OTHER_PARTS = ("district", "text")

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_DIGITS = re.compile(r"\D+")


def fold_unique(value: str) -> str:
    """Case- and accent-insensitive form of a string: "Müller-Šimkus" -> "muller simkus".

    Non-Latin scripts are transliterated with ``anyascii`` ("Шевченко" -> "shevchenko").
    Idempotent: folding a folded string changes nothing. Not memoized: for values that
    rarely repeat (an address line), which would only push the repeating ones out of
    :func:`fold_text`'s cache."""
    if value.isascii():  # the common case: nothing to decompose or transliterate
        return _NON_ALNUM.sub(" ", value.lower()).strip()
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NON_ALNUM.sub(" ", anyascii(stripped).casefold()).strip()


#: :func:`fold_unique`, memoized: for values that repeat across records (cities, names).
fold_text = lru_cache(maxsize=FOLD_CACHE_SIZE)(fold_unique)


#: Apostrophes and modifier letters that join a name's parts ("O'Brien", "D\u2019Angelo",
#: "Il'ich" from Cyrillic, "Sa\u02bfid"): dropped, not turned into a space.
_APOSTROPHES = re.compile("['`\u2019\u02bc\u02bb\u02bf\u02be\u00b4]")


@lru_cache(maxsize=FOLD_CACHE_SIZE)
def fold_name(value: str) -> str:
    """:func:`fold_text` for personal names: apostrophes join instead of splitting
    ("O'Brien" -> "obrien", "Ильич" -> "ilich"). Idempotent."""
    if not value.isascii():
        value = anyascii(_APOSTROPHES.sub("", value))
    return fold_text(_APOSTROPHES.sub("", value))


def phone_digits(value: str) -> str:
    """Digits of a phone number; the last ten are what the index keeps and matches."""
    return _DIGITS.sub("", value)[-10:]


def normalize_search_value(param: str, value: str) -> str:
    """Normalize a search value from a URL into the indexed form for ``param``."""
    if param in ("name", "family", "given"):
        return fold_name(value)
    if param == "phone":
        return phone_digits(value)
    if param in ("email",):
        return value.strip().casefold()
    if param == "address-postalcode":
        return value.replace(" ", "").upper()
    if param == "address" or param in ADDRESS_PARTS.values():
        return fold_text(value)
    if param == "identifier":
        return value.strip()
    return value.strip()


def strings(values: Any) -> list[str]:
    """The values of a primitive string array (``given``, ``line``...) without its null
    placeholders: a null there only lines a ``_given`` extension up with its position
    (https://hl7.org/fhir/R4/json.html#primitive), it is no value."""
    return [value for value in values or () if value is not None]


def search_tokens(resource: dict[str, Any]) -> list[SearchToken]:
    """Every indexed search value of a Patient resource (FHIR JSON), each once, in the
    order first found.

    The candidates are collected in one list and deduplicated by a dict at the end,
    not tested against the tokens so far one call each (a linear ``in`` over a list):
    ~12 tokens from ~14 candidates per golden record, written for each of the 26k golden
    writes of a 25k-Patient sync."""
    found: list[SearchToken] = []
    add = found.append
    limit = MAX_TOKEN_LENGTH
    for name in resource.get("name") or ():
        family = name.get("family")
        if family:
            folded = fold_name(family)
            if folded:
                token = folded[:limit]
                add(("family", None, token))
                add(("name", None, token))
                for part in folded.split():
                    add(("name", None, part[:limit]))
        for given in name.get("given") or ():
            if given is not None:
                folded = fold_name(given)
                if folded:
                    token = folded[:limit]
                    add(("given", None, token))
                    add(("name", None, token))
        text = name.get("text")
        if text:
            for part in fold_name(text).split():
                add(("name", None, part[:limit]))
    for ident in resource.get("identifier") or ():
        value = (ident.get("value") or "").strip()
        if value:
            add(("identifier", ident.get("system"), value[:limit]))
    for telecom in resource.get("telecom") or ():
        system = telecom.get("system")
        if system == "phone":
            value = phone_digits(telecom.get("value") or "")
        elif system == "email":
            value = (telecom.get("value") or "").strip().casefold()
        else:
            continue
        if value:
            add((system, None, value[:limit]))
    for address in resource.get("address") or ():
        postal = address.get("postalCode")
        if postal:
            value = postal.replace(" ", "").upper()
            if value:
                add(("address-postalcode", None, value[:limit]))
        for part, param in ADDRESS_PARTS.items():
            text = address.get(part)
            if text:
                folded = fold_text(text)
                if folded:
                    add((param, None, folded[:limit]))
        others = strings(address.get("line"))
        others += [address[part] for part in ADDRESS_OTHER_PARTS if address.get(part)]
        for text in others:
            folded = fold_unique(text)
            if folded:
                add(("address", None, folded[:limit]))
    return list(dict.fromkeys(found))
