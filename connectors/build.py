"""``build_source``: a :class:`SourceConfig` in, a ready :class:`Source` out."""

from __future__ import annotations

import time

import httpx

from connectors.auth import build_auth
from connectors.bulk import BulkExportSource
from connectors.config import (
    PUSH_ONLY_KINDS,
    SOURCE_KINDS,
    SourceConfig,
    SourceOptions,
    push_arrival,
)
from connectors.errors import PermanentError
from connectors.history import HistorySource
from connectors.http import FhirHttp, Sleep
from connectors.ndjson import NdjsonDirectorySource
from connectors.search import FhirSearchSource
from connectors.source import Source


def build_source(
    config: SourceConfig,
    *,
    transport: httpx.BaseTransport | None = None,
    sleep: Sleep = time.sleep,
) -> Source:
    """Build the source for ``config.kind``.

    ``transport`` replaces the network (tests pass ``httpx.MockTransport``);
    ``sleep`` replaces waiting (backoff, rate limit, bulk polling). A bad
    configuration raises ``ValueError`` before any request is made.
    """
    if config.kind not in SOURCE_KINDS:
        raise ValueError(f"source kind must be one of {SOURCE_KINDS}")
    if config.kind in PUSH_ONLY_KINDS:
        raise PermanentError(
            f"a {config.kind} source is push-only: nothing is pulled from it"
            f" ({push_arrival(config.kind)})"
        )
    options = SourceOptions.from_dict(dict(config.options))
    if config.kind == "ndjson":
        return NdjsonDirectorySource(config, options)
    auth = build_auth(config.auth, config.base_url)
    http = FhirHttp(config.base_url, options, auth=auth, transport=transport, sleep=sleep)
    if config.kind == "history":
        return HistorySource(config, options, http)
    if config.kind == "bulk":
        return BulkExportSource(config, options, http, sleep=sleep)
    return FhirSearchSource(config, options, http)
