"""Telecom and address normalization.

- ContactPoint (https://hl7.org/fhir/R4/datatypes.html#ContactPoint): phones, fax and
  SMS numbers are parsed with ``phonenumbers`` to E.164, using the source's default
  region for numbers written without a country code; emails are trimmed and
  lower-cased. The value as given is kept next to the normalized one.
- Address (https://hl7.org/fhir/R4/datatypes.html#Address): lines are folded, stripped
  of punctuation and abbreviated from the USPS table in ``data/street_abbreviations.csv``;
  postal codes are normalized per country.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache
from typing import Any

import phonenumbers
from phonenumbers.phonemetadata import PhoneMetadata

from fhir_mapping import _data
from fhir_mapping.model import Address, ContactPoint, Period
from fhir_mapping.search import fold_text, strings

#: Region assumed for a phone number without a country code when the source names none.
DEFAULT_REGION = "US"
#: Distinct values memoized by the telecom and address normalizers. Small on purpose:
#: phone numbers and address lines are mostly one person's, so a cache sized to the
#: input only grows the process (~2.8 kB per patient across the fhir_mapping caches).
#: Sized to reach back one source (16384 entries, so that a person's values were still
#: cached when the next source brought them) these caches helped only loads where one
#: source has fewer Patients than that (at 100k Patients a person comes back after ~35k
#: others), and filling up they grew bench.ingest's peak RSS with the load: 216 MB at
#: 25k Patients, 236 MB at 100k (4096: 210, 221).
CONTACT_CACHE_SIZE = 1 << 12
PHONE_SYSTEMS = frozenset({"phone", "fax", "sms", "pager"})
_URI_SCHEMES = ("tel:", "mailto:", "sms:", "fax:")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_POSTAL_JUNK = re.compile(r"[^0-9A-Z]")
_DIGITS = re.compile(r"\D")
#: A phone written with digits and separators only (no letters, no extension).
_PLAIN_PHONE = re.compile(r"^\+?[\d\s\-.()/]+$")
#: North American Numbering Plan: country code 1, ten-digit national numbers whose area
#: code and exchange each start with 2-9.
NANP_COUNTRY_CODE = 1
NANP_LENGTH = 10
#: Country calling codes have one to three digits (ITU-T E.164).
MAX_COUNTRY_CODE_LENGTH = 3
#: Longest national significant number ``phonenumbers`` knows of (its _MAX_LENGTH_FOR_NSN).
MAX_NATIONAL_LENGTH = 17
#: The area code never starts with 0 or 1; the exchange is not checked because test and
#: fictional numbers ("555-0123", simulators' "555-1xx-xxxx") break that rule.
_NANP_NATIONAL = re.compile(r"^[2-9]\d{9}$")
#: Postal codes whose two halves are written with one space (outward + inward code).
_SPLIT_POSTAL = {"GB": 3, "CA": 3}
#: Length of the normalized US ZIP (ZIP+4 is cut to the ZIP).
US_ZIP_LENGTH = 5
US_ZIP_PLUS4_LENGTH = 9


def _period(raw: dict[str, Any] | None) -> Period | None:
    if not raw:
        return None
    return Period(start=raw.get("start"), end=raw.get("end"))


def _strip_scheme(value: str) -> str:
    if ":" not in value:
        return value
    lowered = value[:8].lower()
    for scheme in _URI_SCHEMES:
        if lowered.startswith(scheme):
            return value[len(scheme) :]
    return value


@lru_cache(maxsize=CONTACT_CACHE_SIZE)
def normalize_phone(value: str, region: str = DEFAULT_REGION) -> str:
    """E.164 form of a phone number ("(415) 555-0123" -> "+14155550123"), or "" when it
    cannot be a phone number. Fictional 555 numbers are kept: they are possible numbers.

    A number written with only digits and separators is reduced to its digits first, so
    the same number written differently by two sources is parsed once."""
    text = _strip_scheme(value).strip()
    region = region or DEFAULT_REGION
    if _PLAIN_PHONE.match(text):
        digits = _DIGITS.sub("", text)
        known = (
            _split_country_code(digits) if text.startswith("+") else _nanp_national(digits, region)
        )
        if known is not None:
            return _known_e164(*known)
        text = "+" + digits if text.startswith("+") else digits
    return _parse_phone(text, region)


def _nanp_national(digits: str, region: str) -> tuple[int, str] | None:
    """(1, national number) of a North American number written nationally ("(415)…",
    "1-415…") in a NANP region, else None."""
    if not _is_nanp(region):
        return None
    if len(digits) == NANP_LENGTH + 1 and digits[0] == "1":
        digits = digits[1:]
    return (NANP_COUNTRY_CODE, digits) if _NANP_NATIONAL.match(digits) else None


def _split_country_code(digits: str) -> tuple[int, str] | None:
    """(country code, national number) of an international number ("+49 1761…") when
    ``phonenumbers.parse`` would do nothing more than split it there: the country has
    no national-prefix rewriting and the number starts with neither 0 nor the national
    prefix. Else None, and the number is parsed."""
    for length in range(1, MAX_COUNTRY_CODE_LENGTH + 1):
        code = int(digits[:length] or 0)
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            national = digits[length:]
            prefixes = _plain_national_prefixes(code)
            if (
                prefixes is None
                or not national
                or national[0] == "0"
                or any(national.startswith(p) for p in prefixes)
            ):
                return None
            return code, national
    return None


@cache
def _plain_national_prefixes(country_code: int) -> tuple[str, ...] | None:
    """The national prefixes of a country whose metadata strips nothing but them when
    parsing (no transform rule, no other pattern); None for the others (Lithuania's "8",
    the UK's dependencies…), which ``phonenumbers.parse`` handles."""
    prefixes: list[str] = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[country_code]:
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        if metadata is None or metadata.national_prefix_transform_rule:
            return None
        pattern = metadata.national_prefix_for_parsing
        if pattern is not None and pattern != metadata.national_prefix:
            return None
        if metadata.national_prefix:
            prefixes.append(metadata.national_prefix)
    return tuple(prefixes)


def _known_e164(country_code: int, national: str) -> str:
    """A number whose country code and national number are already known (a national
    number of digits without a leading zero): its E.164 is "+", the code and the digits.
    The result equals ``phonenumbers.parse``'s (tests/fhir_mapping/test_properties.py
    checks it) at a fraction of the cost."""
    digits = national if national.isascii() else _ascii_digits(national)
    if not _possible_length(country_code, len(digits)):
        return ""
    if country_code == NANP_COUNTRY_CODE and not _NANP_NATIONAL.match(national):
        return ""
    return f"+{country_code}{digits}"


def _ascii_digits(national: str) -> str:
    """Other scripts' decimal digits (which ``\\d`` matches) in ASCII, leading zeros
    dropped, as ``str(int(national))`` would give without int()'s 4300-digit limit."""
    return "".join(str(unicodedata.decimal(c)) for c in national).lstrip("0") or "0"


@cache
def _possible_length(country_code: int, length: int) -> bool:
    """``phonenumbers.is_possible_number`` of a number of the country with a national
    number of ``length`` digits: it only checks that length against the country's
    metadata, so it is asked once per (country code, length), a few thousand at most
    (no country's numbers are longer than ``MAX_NATIONAL_LENGTH``)."""
    if length > MAX_NATIONAL_LENGTH:
        return False
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int("9" * length))
    return bool(phonenumbers.is_possible_number(number))


@cache
def _is_nanp(region: str) -> bool:
    return phonenumbers.country_code_for_region(region.upper()) == NANP_COUNTRY_CODE


@lru_cache(maxsize=CONTACT_CACHE_SIZE)
def _parse_phone(text: str, region: str) -> str:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return ""
    if not number.national_number or not phonenumbers.is_possible_number(number):
        # An all-zero national number is never a real number (and does not format stably).
        return ""
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if number.italian_leading_zero and phonenumbers.parse(e164) != number:
        # Leading zeros where the country has none ("+49 0001"): junk that would not
        # read back as the same number, so it could never match anything reliably.
        return ""
    if number.country_code == NANP_COUNTRY_CODE and not _NANP_NATIONAL.match(e164[2:]):
        # A possible length but no valid area code: a foreign number read with a US region.
        return ""
    return e164


def normalize_email(value: str) -> str:
    """Trimmed, lower-cased email without a ``mailto:`` scheme; "" when not an address."""
    email = _strip_scheme(value.strip()).strip().casefold()
    return email if _EMAIL.match(email) else ""


def normalize_contact_point(raw: dict[str, Any], region: str = DEFAULT_REGION) -> ContactPoint:
    """A validated ContactPoint (FHIR JSON) as a :class:`ContactPoint`."""
    system = raw.get("system")
    value = raw.get("value")
    normalized = ""
    if value:
        if system in PHONE_SYSTEMS:
            normalized = normalize_phone(value, region)
        elif system == "email":
            normalized = normalize_email(value)
        else:
            normalized = value.strip()
    period = raw.get("period")
    return ContactPoint(
        system,
        value,
        normalized,
        raw.get("use"),
        raw.get("rank"),
        _period(period) if period else None,
    )


@lru_cache(maxsize=CONTACT_CACHE_SIZE)
def normalize_line(line: str) -> str:
    """One address line folded with standard abbreviations: "12 North Main Street, Apt. 4"
    -> "12 n main st apt 4". Idempotent."""
    table = _data.street_abbreviations()
    return " ".join(table.get(word, word) for word in fold_text(line).split())


@lru_cache(maxsize=CONTACT_CACHE_SIZE)
def normalize_country(country: str | None) -> str | None:
    """ISO 3166-1 alpha-2 code for a country as written ("USA" -> "US"), or None."""
    if not country:
        return None
    return _data.countries().get(fold_text(country))


@lru_cache(maxsize=CONTACT_CACHE_SIZE)
def normalize_postal_code(postal_code: str, country: str | None = None) -> str:
    """Postal code normalized per country: US ZIP+4 -> ZIP ("94105-1234" -> "94105"),
    UK and Canada outward + inward code ("sw1a1aa" -> "SW1A 1AA"), else upper-case
    without spaces or punctuation. Idempotent."""
    iso = normalize_country(country)
    compact = _POSTAL_JUNK.sub("", postal_code.upper())
    digits = _DIGITS.sub("", postal_code)
    if iso == "US" or (
        iso is None and digits == compact and len(digits) in (US_ZIP_LENGTH, US_ZIP_PLUS4_LENGTH)
    ):
        return digits[:US_ZIP_LENGTH] if len(digits) >= US_ZIP_LENGTH else digits
    inward = _SPLIT_POSTAL.get(iso or "")
    if inward is not None and len(compact) > inward:
        return f"{compact[:-inward]} {compact[-inward:]}"
    return compact


def normalize_address(raw: dict[str, Any]) -> Address:
    """A validated Address (FHIR JSON) as an :class:`Address` with match features."""
    lines = strings(raw.get("line"))
    city = raw.get("city")
    postal = raw.get("postalCode")
    country = raw.get("country")
    period = raw.get("period")
    # Positional, in Address's field order (tests/fhir_mapping/test_hc_parse.py).
    return Address(
        raw.get("use"),
        raw.get("type"),
        raw.get("text"),
        lines,
        city,
        raw.get("district"),
        raw.get("state"),
        postal,
        country,
        _period(period) if period else None,
        _lines_normalized(tuple(lines)),
        fold_text(city) if city else "",
        normalize_postal_code(postal, country) if postal else "",
    )


@lru_cache(maxsize=CONTACT_CACHE_SIZE)
def _lines_normalized(lines: tuple[str, ...]) -> str:
    return " ".join(n for n in (normalize_line(x) for x in lines) if n)
