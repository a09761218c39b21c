"""Migrations 0014 and 0016: golden records stored before Patient search gained a
parameter get its tokens (active records only; ``store.migrations.backfill``) and are
found by it; the downgrade removes them.

- 0014: ``address-city``, ``address-state`` and ``address-country``;
- 0016: ``address``'s own tokens, each line, the district and the text.
"""

from __future__ import annotations

import json
from typing import Any

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


def test_0014_adds_the_address_part_tokens_and_downgrade_removes_them(empty_db_url: str) -> None:
    upgrade(empty_db_url, "0013")
    address = {"city": "Saint-Étienne", "state": "Loire", "country": "FR", "postalCode": "42000"}
    resources = {
        "g1": ("active", {"resourceType": "Patient", "address": [address, {"city": "Lyon"}]}),
        "g2": ("active", {"resourceType": "Patient", "name": [{"family": "Noaddress"}]}),
        "g3": ("merged", {"resourceType": "Patient", "address": [{"city": "Merged"}]}),
    }
    _insert(empty_db_url, resources, "address-postalcode:42000")
    upgrade(empty_db_url, "0014")
    assert _tokens(empty_db_url) == {
        ("g1", "address-postalcode", "42000"),
        ("g1", "address-city", "saint etienne"),
        ("g1", "address-state", "loire"),
        ("g1", "address-country", "fr"),
        ("g1", "address-city", "lyon"),
    }
    downgrade(empty_db_url, "0013")
    assert _tokens(empty_db_url) == {("g1", "address-postalcode", "42000")}


def test_0016_adds_the_address_line_tokens_and_downgrade_removes_them(empty_db_url: str) -> None:
    upgrade(empty_db_url, "0015")
    lines = {"line": ["12 Rue de la Paix", None], "district": "IIe", "city": "Paris"}
    resources = {
        "g1": (
            "active",
            {"resourceType": "Patient", "address": [lines, {"text": "Boîte postale 7, Lyon"}]},
        ),
        "g2": ("active", {"resourceType": "Patient", "name": [{"family": "Noaddress"}]}),
        "g3": ("merged", {"resourceType": "Patient", "address": [{"line": ["1 Merged Way"]}]}),
    }
    _insert(empty_db_url, resources, "address-city:paris")
    upgrade(empty_db_url, "0016")
    assert _tokens(empty_db_url) == {
        ("g1", "address-city", "paris"),
        ("g1", "address", "12 rue de la paix"),
        ("g1", "address", "iie"),
        ("g1", "address", "boite postale 7 lyon"),
    }
    downgrade(empty_db_url, "0015")
    assert _tokens(empty_db_url) == {("g1", "address-city", "paris")}
