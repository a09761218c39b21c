"""search_tokens collects its candidates and deduplicates them once: the same tokens, in
the same order, as the token-by-token version it replaced."""

from __future__ import annotations

import random
from typing import Any

from fhir_mapping.search import (
    MAX_TOKEN_LENGTH,
    SearchToken,
    fold_name,
    phone_digits,
    search_tokens,
    strings,
)


def _add(tokens: list[SearchToken], param: str, system: str | None, value: str | None) -> None:
    if value:
        token = (param, system, value[:MAX_TOKEN_LENGTH])
        if token not in tokens:
            tokens.append(token)


def _reference(resource: dict[str, Any]) -> list[SearchToken]:
    """search_tokens before: each candidate tested against the tokens so far."""
    tokens: list[SearchToken] = []
    for name in resource.get("name") or []:
        family = name.get("family")
        givens = strings(name.get("given"))
        if family:
            folded = fold_name(family)
            _add(tokens, "family", None, folded)
            _add(tokens, "name", None, folded)
            for part in folded.split():
                _add(tokens, "name", None, part)
        for given in givens:
            folded = fold_name(given)
            _add(tokens, "given", None, folded)
            _add(tokens, "name", None, folded)
        if name.get("text"):
            for part in fold_name(name["text"]).split():
                _add(tokens, "name", None, part)
    for ident in resource.get("identifier") or []:
        _add(tokens, "identifier", ident.get("system"), (ident.get("value") or "").strip())
    for telecom in resource.get("telecom") or []:
        value = telecom.get("value") or ""
        if telecom.get("system") == "phone":
            _add(tokens, "phone", None, phone_digits(value))
        elif telecom.get("system") == "email":
            _add(tokens, "email", None, value.strip().casefold())
    for address in resource.get("address") or []:
        postal = address.get("postalCode")
        if postal:
            _add(tokens, "address-postalcode", None, postal.replace(" ", "").upper())
    return tokens


_WORDS = ["Anne", "anne", "Marie", "O'Brien", "Müller", "Шевченко", "de la Cruz", "  ", "", "-"]
_LONG = "x" * (MAX_TOKEN_LENGTH + 3)


def _random_patient(rng: random.Random) -> dict[str, Any]:
    def word() -> str:
        return rng.choice(_WORDS) if rng.random() < 0.9 else _LONG + rng.choice("ab")

    resource: dict[str, Any] = {"resourceType": "Patient"}
    resource["name"] = [
        {
            "family": rng.choice([None, word(), f"{word()} {word()}"]),
            "given": rng.choice([None, [], [word(), None, word()], [word()]]),
            "text": rng.choice([None, "", f"{word()} {word()}"]),
        }
        for _ in range(rng.randint(0, 3))
    ]
    resource["identifier"] = [
        {
            "system": rng.choice([None, "urn:a", "urn:b"]),
            "value": rng.choice([None, " 1 ", "1", ""]),
        }
        for _ in range(rng.randint(0, 3))
    ]
    resource["telecom"] = [
        {
            "system": rng.choice(["phone", "email", "fax", None]),
            "value": rng.choice([None, "", "(415) 555-0101", "+1 415 555 0101", " A@B.org ", "x"]),
        }
        for _ in range(rng.randint(0, 4))
    ]
    resource["address"] = [
        {"postalCode": rng.choice([None, "", " ", "94 612", "sw1a 1aa", _LONG])}
        for _ in range(rng.randint(0, 3))
    ]
    return resource


def test_tokens_equal_the_token_by_token_version() -> None:
    rng = random.Random(6)
    for _ in range(3000):
        resource = _random_patient(rng)
        assert search_tokens(resource) == _reference(resource)
    assert search_tokens({"resourceType": "Patient"}) == []


def test_truncated_values_that_collide_are_one_token() -> None:
    resource = {
        "name": [{"family": _LONG + "a", "given": [_LONG + "b"]}],
        "address": [{"postalCode": _LONG + "a"}, {"postalCode": _LONG + "b"}],
    }
    tokens = search_tokens(resource)
    assert tokens == _reference(resource)
    assert tokens.count(("name", None, _LONG[:MAX_TOKEN_LENGTH])) == 1
    assert tokens.count(("address-postalcode", None, "X" * MAX_TOKEN_LENGTH)) == 1
