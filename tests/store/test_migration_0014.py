"""Migration 0014: golden records stored before Patient search had ``address-city``,
``address-state`` and ``address-country`` get those tokens, and are found by them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from store import downgrade, make_engine, upgrade
from tests.conftest import create_pg_database, drop_pg_database

_RESOURCES = {
    "g1": {
        "resourceType": "Patient",
        "address": [
            {"city": "Saint-Étienne", "state": "Loire", "country": "FR", "postalCode": "42000"},
            {"city": "Lyon"},
        ],
    },
    "g2": {"resourceType": "Patient", "name": [{"family": "Noaddress"}]},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url_at_0013(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'at0013.db'}"
        upgrade(url, "0013")
        yield url
        return
    url = create_pg_database()
    upgrade(url, "0013")
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


def test_0014_adds_the_address_tokens_of_stored_records_and_downgrade_removes_them(
    url_at_0013: str,
) -> None:
    engine = make_engine(url_at_0013)
    with engine.begin() as connection:
        for golden_id, resource in _RESOURCES.items():
            connection.execute(
                text(
                    "INSERT INTO golden_patient (id, version, resource, status, created_at,"
                    " last_updated) VALUES (:id, 1, :resource, 'active', CURRENT_TIMESTAMP,"
                    " CURRENT_TIMESTAMP)"
                ),
                {"id": golden_id, "resource": json.dumps(resource)},
            )
        connection.execute(
            text(
                "INSERT INTO golden_search_token (golden_id, param, system, value)"
                " VALUES ('g1', 'address-postalcode', NULL, '42000')"
            )
        )
    engine.dispose()
    upgrade(url_at_0013, "0014")
    assert _tokens(url_at_0013) == {
        ("g1", "address-postalcode", "42000"),
        ("g1", "address-city", "saint etienne"),
        ("g1", "address-state", "loire"),
        ("g1", "address-country", "fr"),
        ("g1", "address-city", "lyon"),
    }
    downgrade(url_at_0013, "0013")
    assert _tokens(url_at_0013) == {("g1", "address-postalcode", "42000")}
