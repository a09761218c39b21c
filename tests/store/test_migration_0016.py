"""Migration 0016: golden records stored before Patient search had ``address`` get the
tokens of their address lines, districts and texts (active records only), and the
downgrade removes them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from store import downgrade, make_engine, upgrade
from tests.conftest import create_pg_database, drop_pg_database

_RESOURCES = {
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
    "g2": ("active", {"resourceType": "Patient", "name": [{"family": "Noaddress"}]}),
    "g3": ("merged", {"resourceType": "Patient", "address": [{"line": ["1 Merged Way"]}]}),
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url_at_0015(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'at0015.db'}"
        upgrade(url, "0015")
        yield url
        return
    url = create_pg_database()
    upgrade(url, "0015")
    yield url
    drop_pg_database(url)


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


def test_0016_adds_the_address_tokens_of_stored_records_and_downgrade_removes_them(
    url_at_0015: str,
) -> None:
    engine = make_engine(url_at_0015)
    with engine.begin() as connection:
        for golden_id, (status, resource) in _RESOURCES.items():
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
                " VALUES ('g1', 'address-city', NULL, 'paris')"
            )
        )
    engine.dispose()
    upgrade(url_at_0015, "0016")
    assert _tokens(url_at_0015) == {
        ("g1", "address-city", "paris"),
        ("g1", "address", "12 rue de la paix"),
        ("g1", "address", "iie"),
        ("g1", "address", "boite postale 7 lyon"),
    }
    downgrade(url_at_0015, "0015")
    assert _tokens(url_at_0015) == {("g1", "address-city", "paris")}
