"""Benchmark: pull Patients from a local sekmet-fhir server, and split the time.

Starts sekmet-fhir (``$ASKONCE_SEKMET`` or ``.venv-sekmet/bin/sekmet``) on a free
loopback port, seeds ``--patients`` synthetic Patients with transaction Bundles,
then runs one full ``FhirSearchSource.stream("Patient")`` (the real connector:
retry policy, rate limiter off, paging, de-duplication, cursor after each page).

The transport is wrapped so that the time from sending a request until its
response body has been read is counted as the server's (plus the loopback
socket); everything else is our client: building requests, JSON parsing, the
de-duplication and cursor work. The last line printed is the JSON summary::

    {"resources_per_s": ..., "client_overhead_fraction": ...}

``client_overhead_fraction = client time / wall time`` of the pull.

With ``--ndjson`` it measures the NDJSON folder connector instead (no server): the
Encounters and Patients of ``tools.ehrgen`` (``--patients`` people) streamed by
``NdjsonDirectorySource``, and the per-line parse alone, ``json.loads`` against
:func:`connectors.ndjson.loads_line`::

    {"ndjson_resources_per_s": ..., "json_loads_us": ..., "loads_line_us": ..., ...}

Usage: ``.venv/bin/python -m bench.connector [--patients 20000] [--page-size 500] [--ndjson]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from connectors import SourceConfig, build_source
from connectors.ndjson import loads_line
from tests.sekmet_server import SekmetServer, sekmet_executable, synthetic_patient

DEFAULT_PATIENTS = 20_000
DEFAULT_PAGE_SIZE = 500
SEED_BATCH = 1_000
#: Give up seeding after this long rather than hold the shared machine.
MAX_SEED_S = 600.0
FAMILY = "Bench"
NDJSON_SEED = 11
#: Passes over the lines when timing a parser (the best one counts).
NDJSON_REPEAT = 3


class TimedTransport(httpx.HTTPTransport):
    """Counts time spent waiting for and reading each response (the server's share)."""

    def __init__(self) -> None:
        super().__init__()
        self.server_s = 0.0
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        start = time.perf_counter()
        response = super().handle_request(request)
        body = response.read()
        self.server_s += time.perf_counter() - start
        self.requests += 1
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=body,
            request=request,
            extensions=response.extensions,
        )


def seed(server: SekmetServer, count: int) -> float:
    started = time.perf_counter()
    for start in range(0, count, SEED_BATCH):
        batch = [synthetic_patient(i, FAMILY) for i in range(start, min(count, start + SEED_BATCH))]
        server.seed(batch, batch_size=SEED_BATCH)
        if time.perf_counter() - started > MAX_SEED_S:
            raise SystemExit(f"seeding exceeded {MAX_SEED_S:.0f}s at {start + SEED_BATCH} patients")
    return time.perf_counter() - started


def best_us_per_line(parse: Any, lines: list[bytes], repeat: int = NDJSON_REPEAT) -> float:
    """CPU microseconds per line of ``parse`` over ``lines``, best of ``repeat`` passes."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for line in lines:
            parse(line)
        best = min(best, time.process_time() - started)
    return best / max(1, len(lines)) * 1e6


def ndjson_main(people: int, page_size: int) -> None:
    """Stream generated NDJSON folders through the connector and time the line parse."""
    from tools.ehrgen import generate, write_ndjson

    with tempfile.TemporaryDirectory(prefix="bench-ndjson-") as workdir:
        folder = Path(workdir)
        write_ndjson(generate(people, seed=NDJSON_SEED, encounters_per_patient=3), folder)
        lines = [
            line
            for path in sorted(folder.glob("*/*.ndjson"))
            for line in path.read_bytes().splitlines()
        ]
        json_us = best_us_per_line(json.loads, lines)
        orjson_us = best_us_per_line(loads_line, lines)
        resources = 0
        started = time.process_time()
        for source_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
            config = SourceConfig(
                kind="ndjson", base_url=str(source_folder), options={"page_size": page_size}
            )
            source = build_source(config)
            for resource_type in ("Patient", "Encounter"):
                for page in source.stream(resource_type):
                    resources += len(page.resources)
            source.close()
        stream_s = time.process_time() - started
    summary = {
        "ndjson_resources_per_s": round(resources / stream_s, 1),
        "json_loads_us": round(json_us, 2),
        "loads_line_us": round(orjson_us, 2),
        "resources": resources,
        "cpu_s": round(stream_s, 3),
    }
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS)
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    parser.add_argument("--ndjson", action="store_true", help="the NDJSON folder connector")
    args = parser.parse_args()
    if args.ndjson:
        ndjson_main(args.patients, args.page_size)
        return

    with tempfile.TemporaryDirectory(prefix="bench-sekmet-") as workdir:
        server = SekmetServer(sekmet_executable(), Path(workdir))
        try:
            seed_s = seed(server, args.patients)
            print(f"seeded {args.patients} patients in {seed_s:.1f}s", flush=True)
            transport = TimedTransport()
            config = SourceConfig(
                kind="fhir",
                base_url=server.base_url,
                options={"page_size": args.page_size, "requests_per_s": None},
            )
            source = build_source(config, transport=transport)
            started = time.perf_counter()
            pages = resources = 0
            for page in source.stream("Patient"):
                pages += 1
                resources += len(page.resources)
            wall_s = time.perf_counter() - started
            source.close()
        finally:
            server.stop()

    if resources != args.patients:
        raise SystemExit(f"expected {args.patients} patients, got {resources}")
    client_s = max(0.0, wall_s - transport.server_s)
    print(
        f"pulled {resources} patients in {pages} pages / {transport.requests} requests: "
        f"{wall_s:.2f}s wall, {transport.server_s:.2f}s server+socket, {client_s:.2f}s client",
        flush=True,
    )
    summary = {
        "resources_per_s": round(resources / wall_s, 1),
        "client_overhead_fraction": round(client_s / wall_s, 4),
        "patients": resources,
        "pages": pages,
        "page_size": args.page_size,
        "wall_s": round(wall_s, 3),
        "server_s": round(transport.server_s, 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
