"""Property-based requests from the committed OpenAPI document: never a 500.

schemathesis generates inputs for every operation in ``openapi/openapi.json``
and sends them to the gateway served by uvicorn; each answer must not be a
server error. Examples per operation are bounded so this stays well under two
minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from gateway.auth import TokenService
from tests.gateway.conftest import READER_SCOPES, SECRET, LiveGateway

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

OPENAPI = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
#: Generated requests per operation (the whole run stays well under two minutes).
MAX_EXAMPLES = 30
schema = schemathesis.openapi.from_path(str(OPENAPI))


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: schemathesis.Case, live_gateway: LiveGateway) -> None:
    token = TokenService(SECRET).issue("fuzzer", [*READER_SCOPES, "askonce.admin"])
    headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
    case.call_and_validate(
        base_url=live_gateway.base,
        headers=headers,
        checks=[not_a_server_error],
        timeout=10,
    )
