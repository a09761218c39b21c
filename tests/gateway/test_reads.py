"""Concurrent reads share batched queries and each still gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from gateway.outcomes import OutcomeError
from gateway.reads import PatientReader


def test_concurrent_reads_each_get_their_own_record(
    engine: Engine, add_patient: Callable[..., str]
) -> None:
    ids = [add_patient(family=f"Batch{i}") for i in range(12)]

    async def scenario() -> None:
        reader = PatientReader(engine)
        await reader.open()
        try:
            wanted = [*ids, *ids[:3], "missing-id"]
            results = await asyncio.gather(
                *(reader.read(golden_id) for golden_id in wanted), return_exceptions=True
            )
        finally:
            await reader.close()
        for golden_id, result in zip(wanted[:-1], results[:-1], strict=True):
            assert not isinstance(result, BaseException)
            assert result.id == golden_id and result.as_dict()["id"] == golden_id
        missing = results[-1]
        assert isinstance(missing, OutcomeError) and missing.status == 404

    asyncio.run(scenario())


@pytest.mark.parametrize("bad", ["", "../etc", "x" * 65])
def test_malformed_ids_never_reach_the_database(engine: Engine, bad: str) -> None:
    async def scenario() -> None:
        reader = PatientReader(engine)
        with pytest.raises(OutcomeError) as caught:
            await reader.read(bad)
        assert caught.value.status == 404

    asyncio.run(scenario())
