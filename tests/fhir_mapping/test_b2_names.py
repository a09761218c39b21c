"""The public nickname table (``mpi.guards`` reads it)."""

from __future__ import annotations

from fhir_mapping import nickname_key, nickname_pairs
from fhir_mapping._data import nickname_pairs as private_nickname_pairs


def test_public_nickname_pairs_are_the_table() -> None:
    pairs = nickname_pairs()
    assert pairs == private_nickname_pairs()
    assert ("robert", "bob") in pairs
    for canonical, variant in pairs:
        assert canonical == canonical.strip().lower() and variant == variant.strip().lower()
    assert nickname_key("bob") == "robert"
