"""Blocking keys: records that may be one person share at least one key."""

from __future__ import annotations

from mpi.blocking import block_keys
from tests.mpi.helpers import features


def _shared_kinds(a: list[str], b: list[str]) -> set[str]:
    return {key.split(":", 1)[0] for key in set(a) & set(b)}


def test_same_house_with_a_mistyped_postal_code_and_no_birth_date_shares_a_key() -> None:
    a = features(family="Hingston", line="15 Paul Coe Cres", postal="2565", city="Mooroolbark")
    b = features(
        family="Hingstxon", birth=None, line="15 Paul Coe Cres", postal="2556", city="Mooroolbark"
    )
    assert _shared_kinds(block_keys(a), block_keys(b)) & {"ac"}


def test_keys_hold_no_readable_patient_data() -> None:
    keys = block_keys(features(line="15 Paul Coe Cres", city="Mooroolbark"))
    assert all("paul" not in key and "mooroolbark" not in key for key in keys)
