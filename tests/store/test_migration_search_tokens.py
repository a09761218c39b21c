"""Migrations 0014 and 0016: golden records stored before Patient search gained a
parameter get its tokens (active records only; ``store.migrations.backfill``) and are
found by it; the downgrade removes them.

- 0014: ``address-city``, ``address-state`` and ``address-country``;
- 0016: ``address``'s own tokens, each line, the district and the text.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import text

from store import downgrade, make_engine, upgrade


def _insert(url: str, resources: dict[str, tuple[str, dict[str, Any]]], token: str) -> None:
    """Golden records (id -> status, resource) and one token of ``g1``'s, ``param:value``."""
    engine = make_engine(url)
    param, value = token.split(":")
    with engine.begin() as connection:
        for golden_id, (status, resource) in resources.items():
            connection.execute(
                text(
                    "INSERT INTO golden_patient (id, version, resource, status, created_at,"
                    " last_updated) VALUES (:id, 1, :resource, :status, CURRENT_TIMESTAMP,"
                    " CURRENT_TIMESTAMP)"
                ),
                {"id": golden_id, "resource": json.dumps(resource), "status": status},
            )
        connection.execute(
            text(
                "INSERT INTO golden_search_token (golden_id, param, system, value)"
                " VALUES ('g1', :param, NULL, :value)"
            ),
            {"param": param, "value": value},
        )
    engine.dispose()


def _tokens(url: str) -> set[tuple[str, str, str]]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT golden_id, param, value FROM golden_search_token")
            ).all()
    finally:
        engine.dispose()
    return {(row[0], row[1], row[2]) for row in rows}


_0014 = (
    "0013",
    "0014",
    {
        "g1": (
            "active",
            {
                "resourceType": "Patient",
                "address": [
                    {
                        "city": "Saint-Étienne",
                        "state": "Loire",
                        "country": "FR",
                        "postalCode": "42000",
                    },
                    {"city": "Lyon"},
                ],
            },
        ),
        "g3": ("merged", {"resourceType": "Patient", "address": [{"city": "Merged"}]}),
    },
    "address-postalcode:42000",
    {
        ("g1", "address-city", "saint etienne"),
        ("g1", "address-state", "loire"),
        ("g1", "address-country", "fr"),
        ("g1", "address-city", "lyon"),
    },
)
_0016 = (
    "0015",
    "0016",
    {
        "g1": (
            "active",
            {
                "resourceType": "Patient",
                "address": [
                    {"line": ["12 Rue de la Paix", None], "district": "IIe", "city": "Paris"},
                    {"text": "Boîte postale 7, Lyon"},
                ],
            },
        ),
        "g3": ("merged", {"resourceType": "Patient", "address": [{"line": ["1 Merged Way"]}]}),
    },
    "address-city:paris",
    {
        ("g1", "address", "12 rue de la paix"),
        ("g1", "address", "iie"),
        ("g1", "address", "boite postale 7 lyon"),
    },
)


@pytest.mark.parametrize(("before", "revision", "resources", "kept", "added"), [_0014, _0016])
def test_the_migration_adds_the_tokens_of_active_records_and_downgrade_removes_them(
    empty_db_url: str,
    before: str,
    revision: str,
    resources: dict[str, tuple[str, dict[str, Any]]],
    kept: str,
    added: set[tuple[str, str, str]],
) -> None:
    """A record without an address gets nothing, a merged one nothing either; the token
    ``kept`` (one of another parameter) is untouched both ways."""
    upgrade(empty_db_url, before)
    no_address = ("active", {"resourceType": "Patient", "name": [{"family": "Noaddress"}]})
    _insert(empty_db_url, {**resources, "g2": no_address}, kept)
    param, value = kept.split(":")
    upgrade(empty_db_url, revision)
    assert _tokens(empty_db_url) == {("g1", param, value), *added}
    downgrade(empty_db_url, before)
    assert _tokens(empty_db_url) == {("g1", param, value)}
