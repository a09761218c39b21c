""":func:`mpi.features.decode_features` builds its objects with their slots set directly
(not through the frozen dataclasses' ``__init__``) and shares the empty set: it must
decode exactly what the plain decoder below (the previous algorithm) decoded, and refuse
what it refused."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson

from fhir_mapping import parse_patient
from mpi.features import (
    FEATURES_VERSION,
    MatchFeatures,
    NameFeatures,
    _hash_tag,
    decode_features,
    encode_features,
    extract_features,
)
from tools.ehrgen import generate

HASH = "0123456789abcdef0123"


def _plain_name(n: list[Any]) -> NameFeatures:
    given, given_first, given_keys, given_phonetic, family, variants, tokens, phonetic, suffix = n
    return NameFeatures(
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


def _plain_decode(text: str | None, content_hash: str | None = None) -> MatchFeatures | None:
    if not text:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
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
        return MatchFeatures(
            tuple([_plain_name(n) for n in names]),
            f"{year:04d}{month:02d}{day:02d}" if complete else None,
            year,
            month,
            day,
            gender,
            frozenset(phones),
            frozenset(emails),
            frozenset(ssns),
            frozenset([(s, v) for s, v in strong]) if strong else frozenset(),
            frozenset([(s, v) for s, v in other]) if other else frozenset(),
            frozenset([(s, v) for s, v in mrns]) if mrns else frozenset(),
            tuple([(line, postal, city) for line, postal, city in addr]),
        )
    except (TypeError, ValueError):
        return None


def _same(a: MatchFeatures | None, b: MatchFeatures | None) -> None:
    assert a == b
    if a is not None and b is not None:  # every field, of the same type
        assert repr(a) == repr(b)
        for x, y in zip(a.names, b.names, strict=True):
            assert type(x) is type(y) is NameFeatures
        assert type(a) is type(b) is MatchFeatures


def _encodings() -> list[str]:
    generated = generate(400, seed=31)
    return [
        encode_features(extract_features(parse_patient(resource)), HASH)
        for resources in generated.patients_by_source.values()
        for resource in resources
    ]


def test_generated_encodings_decode_as_before() -> None:
    encodings = _encodings()
    assert len(encodings) > 700
    for text in encodings:
        decoded = decode_features(text, HASH)
        assert decoded is not None
        plain = _plain_decode(text, HASH)
        _same(decoded, plain)
        assert hash(decoded) == hash(plain)


def _mutations(rng: random.Random, value: list[Any]) -> list[Any]:
    """``value`` with one part replaced by something of another shape."""
    odd: list[Any] = [None, 0, 1, "", "x", [], [[]], [["a", "b", "c"]], [1], {}, True, [None]]
    mutated = json.loads(json.dumps(value))
    position = rng.randrange(2, len(mutated))
    if position == 2 and mutated[2] and rng.random() < 0.5:  # inside a name
        name = mutated[2][0]
        name[rng.randrange(len(name))] = rng.choice(odd)
    else:
        mutated[position] = rng.choice(odd)
    return mutated


def test_malformed_encodings_are_refused_or_decoded_as_before() -> None:
    rng = random.Random(5)
    encodings = _encodings()[:200]
    for text in encodings:
        value = json.loads(text)
        for _ in range(15):
            mutated = json.dumps(_mutations(rng, value))
            try:
                plain = _plain_decode(mutated, HASH)
            except Exception as error:  # what the plain decoder did not catch, it must not
                try:
                    decode_features(mutated, HASH)
                except Exception as again:
                    assert type(again) is type(error)
                else:
                    raise AssertionError("decoded what the plain decoder failed on") from None
                continue
            _same(decode_features(mutated, HASH), plain)
