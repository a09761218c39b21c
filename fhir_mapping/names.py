"""Name normalization: the match features of a HumanName.

A HumanName (https://hl7.org/fhir/R4/datatypes.html#HumanName) becomes a
:class:`~fhir_mapping.model.PersonName` carrying, next to the values as given:

- ``family_folded``: case and diacritics folded, non-Latin scripts transliterated
  with ``anyascii`` ("Nguyễn" -> "nguyen", "Шевченко" -> "shevchenko");
- ``family_alternates``: other spellings worth matching on (German "Müller" ->
  "mueller", "Mueller" -> "muller"; "O'Brien" -> "obrien");
- ``family_tokens``: hyphenated and compound surnames split, particles (van, de,
  al-, bin…) and generational suffixes removed;
- ``given_folded`` and ``given_canonical`` (the nickname-equivalence key);
- ``suffix_normalized``, ``family_first`` and ``swapped_suspect``.

The tables (nicknames, particles, suffixes, surnames) live in ``fhir_mapping/data``.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any, NamedTuple

import jellyfish

from fhir_mapping import _data
from fhir_mapping.model import Period, PersonName
from fhir_mapping.search import fold_name, strings

#: Size of the memo caches of the name normalizers; names repeat a lot across records,
#: and the ones that do (common given and family names) stay in a small LRU; a cache
#: sized to the input keeps every whole name and grows the process with it.
NAME_CACHE_SIZE = 1 << 12

_UMLAUTS = str.maketrans(
    {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss", "ẞ": "SS"}
)
_HAS_UMLAUT = re.compile("[äöüÄÖÜßẞ]")
#: "ae"/"oe"/"ue" after a consonant: the ASCII spelling of a German umlaut ("Mueller").
_UMLAUT_DIGRAPH = re.compile(r"(?<=[bcdfghjklmnpqrstvwxz])([aou])e")
#: Suffixes too ambiguous to strip from the end of a family name ("i", "v" are initials too).
_AMBIGUOUS_TRAILING_SUFFIXES = frozenset({"i", "v"})


@lru_cache(maxsize=1)
def _nickname_table() -> dict[str, str]:
    table: dict[str, str] = {}
    pairs = _data.nickname_pairs()
    for canonical, _variant in pairs:
        table[canonical] = canonical
    for canonical, variant in pairs:
        table.setdefault(variant, canonical)
    return table


@lru_cache(maxsize=1)
def _nickname_groups() -> dict[str, frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for canonical, variant in _data.nickname_pairs():
        groups.setdefault(variant, {variant}).add(canonical)
        groups.setdefault(canonical, {canonical})
    return {name: frozenset(keys) for name, keys in groups.items()}


@lru_cache(maxsize=NAME_CACHE_SIZE)
def nickname_key(given_folded: str) -> str:
    """The nickname-equivalence key of a folded given name: "bob" -> "robert",
    "mohamed" -> "mohammed", "hussein" -> "hossein". Names not in the table are their
    own key; a multi-word given name is mapped word by word. Idempotent."""
    table = _nickname_table()
    words = given_folded.split()
    return " ".join(table.get(word, word) for word in words)


def nickname_pairs() -> tuple[tuple[str, str], ...]:
    """The nickname table (``data/nicknames.csv``): (canonical, variant) pairs of folded
    given names, in file order ("robert", "bob")."""
    return _data.nickname_pairs()


def nickname_keys(given_folded: str) -> frozenset[str]:
    """Every equivalence key a one-word folded given name may stand for ("alex" ->
    {"alexander", "alex"}); for names listed under several canonical names."""
    return _nickname_groups().get(given_folded, frozenset({nickname_key(given_folded)}))


@lru_cache(maxsize=NAME_CACHE_SIZE)
def phonetic_key(folded: str) -> str:
    """Metaphone code of each word of a folded name, joined by one space ("smyth" ->
    "SM0", like "smith"; "hussein" -> "HSN", like "hossein"). Metaphone groups more of
    our spelling variants than NYSIIS does (see tests/fhir_mapping/test_names.py).
    https://en.wikipedia.org/wiki/Metaphone"""
    return " ".join(jellyfish.metaphone(word) for word in folded.split())


def normalize_suffix(value: str) -> str | None:
    """ "Jr." -> "jr", "III" -> "iii", "2nd" -> "ii"; None when not a generational suffix."""
    return _data.suffixes().get(fold_name(value).replace(" ", ""))


def family_alternates(family: str, folded: str | None = None) -> list[str]:
    """Other foldings of a family name: the German umlaut spelling both ways, and
    the words run together ("o brien" -> "obrien")."""
    folded = fold_name(family) if folded is None else folded
    alternates: list[str] = []
    composed = unicodedata.normalize("NFC", family)
    if _HAS_UMLAUT.search(composed):
        alternates.append(fold_name(composed.translate(_UMLAUTS)))
    else:
        alternates.append(_UMLAUT_DIGRAPH.sub(r"\1", folded))
    if " " in folded:
        alternates.append(folded.replace(" ", ""))
    unique: list[str] = []
    for alternate in alternates:
        if alternate and alternate != folded and alternate not in unique:
            unique.append(alternate)
    return unique


def family_tokens(folded: str) -> tuple[list[str], str | None]:
    """Split a folded family name into tokens without particles; also returns a
    generational suffix found at its end ("smith jr" -> (["smith"], "jr"))."""
    words = folded.split()
    suffix: str | None = None
    if len(words) > 1 and words[-1] not in _AMBIGUOUS_TRAILING_SUFFIXES:
        suffix = _data.suffixes().get(words[-1])
        if suffix is not None:
            words = words[:-1]
    particles = _data.particles()
    tokens = [w for w in words if w not in particles]
    return (tokens or words), suffix


class _Features(NamedTuple):
    """The match features of one name; immutable, so it can be memoized."""

    family_folded: str
    family_alternates: tuple[str, ...]
    family_tokens: tuple[str, ...]
    given_folded: tuple[str, ...]
    given_canonical: tuple[str, ...]
    suffix_normalized: str | None
    family_first: bool
    swapped_suspect: bool


def _split_text(text: str) -> tuple[str, str, bool]:
    """(family, given, family_first) guessed from a text-only name."""
    if "," in text:
        family, _, given = text.partition(",")
        return fold_name(family), fold_name(given), False
    words = fold_name(text).split()
    if len(words) < 2:
        return (words[0] if words else ""), "", False
    leading = _data.family_first_surnames()
    if words[0] in leading and words[-1] not in leading:
        return words[0], " ".join(words[1:]), True
    return words[-1], " ".join(words[:-1]), False


@lru_cache(maxsize=NAME_CACHE_SIZE)  # see fhir_mapping.contact.CONTACT_CACHE_SIZE
def _name_features(
    family: str | None, given: tuple[str, ...], text: str | None, suffix: tuple[str, ...]
) -> _Features:
    family_first = False
    given_folded: tuple[str, ...]
    if family is None and not given and text:
        family_folded, given_text, family_first = _split_text(text)
        given_folded = (given_text,) if given_text else ()
        family_source = family_folded
    else:
        family_folded = fold_name(family) if family else ""
        given_folded = tuple(f for f in (fold_name(g) for g in given) if f)
        family_source = family or ""
        if text and family_folded and given_folded and "," not in text:
            family_first = _reads_family_first(text, family_folded, given_folded)
    family_folded, alternates, tokens, trailing_suffix = _family_features(
        family_source, family_folded
    )
    suffix_normalized = next(
        (s for s in (normalize_suffix(v) for v in suffix) if s is not None), trailing_suffix
    )
    canonical = tuple(nickname_key(g) for g in given_folded)
    swapped = (
        not family_first
        and bool(given_folded)
        and _looks_like_surname(given_folded[0])
        and _looks_like_given_name(family_folded)
    )
    return _Features(
        family_folded,
        alternates,
        tokens,
        given_folded,
        canonical,
        suffix_normalized,
        family_first,
        swapped,
    )


@lru_cache(maxsize=NAME_CACHE_SIZE)
def _family_features(
    family: str, folded: str
) -> tuple[str, tuple[str, ...], tuple[str, ...], str | None]:
    """(folded without a trailing suffix, alternates, tokens, suffix) of a family name;
    memoized on its own because surnames repeat far more than whole names do."""
    tokens, trailing_suffix = family_tokens(folded)
    if trailing_suffix is not None:
        folded = folded.rsplit(" ", 1)[0]
        family = family.rsplit(None, 1)[0]
    alternates = family_alternates(family, folded) if folded else []
    return folded, tuple(alternates), tuple(tokens), trailing_suffix


def _reads_family_first(text: str, family_folded: str, given_folded: tuple[str, ...]) -> bool:
    """True when ``text`` writes the family name before the given names. Spaces are
    ignored because transliterated CJK text has none ("王小明" -> "wangxiaoming")."""
    text_compact = fold_name(text).replace(" ", "")
    family_compact = family_folded.replace(" ", "")
    given_compact = "".join(given_folded).replace(" ", "")
    return (
        text_compact == family_compact + given_compact
        and text_compact != given_compact + family_compact
    )


def _looks_like_surname(folded: str) -> bool:
    return folded in _data.common_surnames() and folded not in _nickname_table()


def _looks_like_given_name(folded: str) -> bool:
    return folded in _nickname_table() and folded not in _data.common_surnames()


def _period(raw: dict[str, Any] | None) -> Period | None:
    if not raw:
        return None
    return Period(start=raw.get("start"), end=raw.get("end"))


def normalize_name(raw: dict[str, Any]) -> PersonName:
    """A validated HumanName (FHIR JSON) as a :class:`PersonName` with match features."""
    family = raw.get("family")
    given = tuple(strings(raw.get("given")))
    text = raw.get("text")
    suffix = tuple(strings(raw.get("suffix")))
    features = _name_features(family, given, text, suffix)
    period = raw.get("period")
    # Positional, in PersonName's field order (tests/fhir_mapping/test_hc_parse.py).
    return PersonName(
        raw.get("use"),
        text,
        family,
        list(given),
        strings(raw.get("prefix")),
        list(suffix),
        _period(period) if period else None,
        features.family_folded,
        list(features.family_alternates),
        list(features.family_tokens),
        list(features.given_folded),
        list(features.given_canonical),
        features.suffix_normalized,
        features.family_first,
        features.swapped_suspect,
    )
