"""Fixtures of the delivery tests: an ``httpx.MockTransport`` endpoint that records what it
was sent (:class:`tests.sync.helpers.Endpoint`) and a client that sends to it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.sync.helpers import Endpoint


@pytest.fixture
def endpoint() -> Endpoint:
    return Endpoint()


@pytest.fixture
def http(endpoint: Endpoint) -> Iterator[httpx.Client]:
    with endpoint.client() as client:
        yield client
