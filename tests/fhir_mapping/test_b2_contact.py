"""The E.164 shortcut of ``normalize_phone`` against ``phonenumbers`` itself."""

from __future__ import annotations

import phonenumbers
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_mapping import normalize_phone, parse_patient
from fhir_mapping.contact import _NANP_NATIONAL, NANP_COUNTRY_CODE, _known_e164

country_codes = st.sampled_from(sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE))
#: ASCII digits, and other scripts' decimal digits (which ``\d`` and int() accept).
digits = st.sampled_from([*"0123456789", "\u0661", "\u0660", "\u096a", "\uff17"])
nationals = st.lists(digits, min_size=1, max_size=22).map("".join).filter(lambda s: s[0] != "0")


def _e164_through_phonenumbers(country_code: int, national: str) -> str:
    """What the shortcut replaced: a PhoneNumber checked and formatted by phonenumbers."""
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(national))
    if not phonenumbers.is_possible_number(number):
        return ""
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if country_code == NANP_COUNTRY_CODE and not _NANP_NATIONAL.match(national):
        return ""
    return e164


@settings(max_examples=600, deadline=None)
@given(country_codes, nationals)
def test_known_e164_is_what_phonenumbers_formats(country_code: int, national: str) -> None:
    assert _known_e164(country_code, national) == _e164_through_phonenumbers(country_code, national)


def test_every_length_of_every_country_code() -> None:
    for country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        for length in range(1, 26):
            national = "9" * length
            assert _known_e164(country_code, national) == _e164_through_phonenumbers(
                country_code, national
            )


def test_formats_seen_in_sources() -> None:
    assert normalize_phone("(415) 555-0123") == "+14155550123"
    assert normalize_phone("+49 176 12345678", "US") == "+4917612345678"
    assert normalize_phone("+1 (123) 555-0123") == ""  # no area code starts with 1
    assert normalize_phone("+49 1", "DE") == ""  # too short for Germany
    assert normalize_phone("+370 612 34567", "LT") == "+37061234567"


def test_a_phone_too_long_for_int_is_no_phone() -> None:
    """Python's int() refuses more than 4300 digits; such a value is junk, not an error."""
    for value in ("+49" + "1" * 5000, "+49" + "\u0661" * 5000, "1" * 5000, "+1" + "2" * 30):
        assert normalize_phone(value, "DE") == ""
    raw = {
        "resourceType": "Patient",
        "id": "long-phone",
        "telecom": [{"system": "phone", "value": "+49" + "1" * 5000}],
    }
    assert parse_patient(raw).telecom[0].value_normalized == ""
