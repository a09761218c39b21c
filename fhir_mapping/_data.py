"""Loaders for the tables in ``fhir_mapping/data`` (read once, cached).

The tables are data, not code: nicknames, street abbreviations, surname particles,
suffixes, frequent surnames, identifier systems and country spellings.
"""

from __future__ import annotations

import csv
import json
from functools import cache
from importlib import resources
from typing import Any

_PACKAGE = "fhir_mapping.data"


def _lines(name: str) -> list[str]:
    text = resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _csv_rows(name: str) -> list[tuple[str, str]]:
    rows = list(csv.reader(_lines(name)))
    return [(row[0].strip(), row[1].strip()) for row in rows[1:] if len(row) >= 2]


@cache
def nickname_pairs() -> tuple[tuple[str, str], ...]:
    """(canonical, variant) pairs, in file order."""
    return tuple(_csv_rows("nicknames.csv"))


@cache
def street_abbreviations() -> dict[str, str]:
    return dict(_csv_rows("street_abbreviations.csv"))


@cache
def suffixes() -> dict[str, str]:
    return dict(_csv_rows("suffixes.csv"))


@cache
def particles() -> frozenset[str]:
    return frozenset(line.strip() for line in _lines("particles.csv")[1:])


@cache
def common_surnames() -> frozenset[str]:
    return frozenset(line.strip() for line in _lines("common_surnames.csv")[1:])


@cache
def family_first_surnames() -> frozenset[str]:
    return frozenset(line.strip() for line in _lines("family_first_surnames.csv")[1:])


def _json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    )
    data.pop("_comment", None)
    return data


@cache
def identifier_systems() -> dict[str, dict[str, str]]:
    return _json("identifier_systems.json")


@cache
def countries() -> dict[str, str]:
    return _json("countries.json")
