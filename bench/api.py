"""Benchmark: the gateway's read and search paths against a bare FastAPI endpoint.

Creates a fresh PostgreSQL database, bulk-loads ``--patients`` golden records
(COPY: golden_patient, golden_patient_version, golden_search_token), serves the
real gateway with uvicorn (``--workers`` processes, as a deployment would) plus
one extra route, ``/bench/bare``, that returns a static JSON of the same size as
a Patient without touching auth or the database. Then ``--clients`` concurrent
keep-alive connections run each measurement for ``--seconds`` (at most 20):

- read: ``GET /fhir/Patient/<random id>`` (bearer token, audit row, ETag);
- search: ``GET /fhir/Patient?identifier=<system>|<random MRN>``;
- populate: ``POST /fhir/Questionnaire/$populate`` of the demo's intake form
  (``askonce/demo_data/intake-questionnaire.json``: 22 items, 15 FHIRPath expressions and
  an ``x-fhir-query`` for the last visit)
  for a random golden record;
- bare: ``GET /bench/bare``.

The load generator is a minimal HTTP/1.1 keep-alive client on asyncio streams
(``wrk`` is not installed here and httpx's per-request overhead would make the
client, not the server, the bottleneck). The last line printed is the summary::

    {"read_rps", "read_p99_ms", "search_rps", "search_p99_ms", "populate_rps",
     "populate_p99_ms", "bare_rps", "ratio"}

with ``ratio = read_rps / bare_rps``. Targets: ratio >= 0.4, read_p99_ms <= 50.

Usage: ``.venv/bin/python -m bench.api [--patients 100000] [--clients 64] [--seconds 20]``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi import FastAPI
from fastapi.responses import Response
from sqlalchemy import text

from askonce.demo import INTAKE_QUESTIONNAIRE
from fhir_mapping import search_tokens
from gateway import GatewayState, create_app
from gateway.auth import TokenService
from store import make_engine, make_session_factory, upgrade

DEFAULT_PATIENTS = 100_000
DEFAULT_CLIENTS = 64
MAX_SECONDS = 20.0
DEFAULT_WORKERS = 2
WARMUP_S = 2.0
PG_ADMIN_URL = os.environ.get(
    "ASKONCE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.4.1.bench"
FAMILIES = ["Nguyen", "Smith", "García", "Müller", "Okafor", "Tanaka", "Kowalski", "Haddad"]
GIVENS = ["Anh", "John", "María", "Jürgen", "Chidi", "Yuki", "Anna", "Omar", "Li", "Sara"]
STARTUP_TIMEOUT_S = 60.0
BARE_PATH = "/bench/bare"
SECRET = "bench-secret-" + "k" * 40
SCOPES = ["system/Patient.rs", "system/Encounter.rs"]
#: COPY's text-format NULL.
NULL = "\\N"


def synthetic_patient(i: int, rng: random.Random) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "active": True,
        "identifier": [{"system": MRN_SYSTEM, "value": f"MRN{i:08d}"}],
        "name": [{"family": rng.choice(FAMILIES), "given": [rng.choice(GIVENS)]}],
        "gender": rng.choice(["male", "female"]),
        "birthDate": f"{rng.randint(1930, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "telecom": [{"system": "phone", "value": f"+1415555{i % 10000:04d}", "use": "mobile"}],
        "address": [
            {"line": [f"{i % 900 + 1} Market St"], "city": "San Francisco", "postalCode": "94103"}
        ],
    }


def load(url: str, patients: int) -> list[str]:
    """COPY ``patients`` golden records with their versions and search tokens; their ids."""
    engine = make_engine(url)
    rng = random.Random(7)
    now = datetime.now(UTC)
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ids: list[str] = []
    gp, ver, tok = io.StringIO(), io.StringIO(), io.StringIO()

    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")

    for i in range(patients):
        golden_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        resource = synthetic_patient(i, rng)
        resource["id"] = golden_id
        resource["meta"] = {"versionId": "1", "lastUpdated": stamp}
        doc = esc(json.dumps(resource, separators=(",", ":")))
        ids.append(golden_id)
        gp.write(
            f"{golden_id}\t1\t{doc}\tactive\t{resource['birthDate']}\t{resource['gender']}"
            f"\t{now.isoformat()}\t{now.isoformat()}\n"
        )
        ver.write(f"{golden_id}\t1\t{doc}\tactive\t{now.isoformat()}\n")
        for param, system, value in search_tokens(resource):
            system_text = esc(system) if system else NULL
            tok.write(f"{golden_id}\t{param}\t{system_text}\t{esc(value)}\n")
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for table, columns, buffer in (
            (
                "golden_patient",
                "id, version, resource, status, birth_date, gender, created_at, last_updated",
                gp,
            ),
            ("golden_patient_version", "golden_id, version, resource, status, recorded_at", ver),
            ("golden_search_token", "golden_id, param, system, value", tok),
        ):
            with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                copy.write(buffer.getvalue())
        raw.commit()
        cur.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    engine.dispose()
    return ids


def server_app() -> FastAPI:
    """The app uvicorn workers serve: the real gateway plus the bare comparison route."""
    url = os.environ["ASKONCE_BENCH_DATABASE_URL"]
    engine = make_engine(url)
    state = GatewayState(
        engine=engine, session_factory=make_session_factory(engine), secret_key=SECRET
    )
    app = create_app(state)
    bare = json.dumps(synthetic_patient(0, random.Random(1)) | {"id": str(uuid.uuid4())}).encode()

    @app.get(BARE_PATH, include_in_schema=False)
    async def bare_endpoint() -> Response:
        return Response(bare, media_type="application/fhir+json")

    return app


class Connection:
    """One keep-alive HTTP/1.1 connection (Content-Length responses only)."""

    def __init__(self, host: str, port: int, headers: str) -> None:
        self.host, self.port, self.headers = host, port, headers
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: str | tuple[str, bytes]) -> int:
        """GET a path, or POST ``(path, JSON body)``; the answer's status."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        if isinstance(request, str):
            self.writer.write(
                f"GET {request} HTTP/1.1\r\nHost: {self.host}\r\n{self.headers}\r\n".encode()
            )
        else:
            path, body = request
            self.writer.write(
                f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.headers}"
                "Content-Type: application/fhir+json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status


async def measure(
    host: str,
    port: int,
    headers: str,
    paths: Sequence[str | tuple[str, bytes]],
    clients: int,
    seconds: float,
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal errors
        conn = Connection(host, port, headers)
        rng = random.Random(n)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            status = await conn.send(rng.choice(paths))
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors += 1
        if conn.writer is not None:
            conn.writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(clients)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    return {
        "rps": len(latencies) / elapsed,
        "p99_ms": p99 * 1000,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
        "requests": len(latencies),
        "errors": errors,
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS)
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    parser.add_argument("--seconds", type=float, default=MAX_SECONDS)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    args = parser.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"askonce_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    proc: subprocess.Popen[bytes] | None = None
    try:
        upgrade(url)
        started = time.perf_counter()
        ids = load(url, args.patients)
        print(
            f"loaded {len(ids)} golden records in {time.perf_counter() - started:.1f}s", flush=True
        )
        port = free_port()
        env = {**os.environ, "ASKONCE_BENCH_DATABASE_URL": url}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.api:server_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        wait_ready(port, proc)
        token = TokenService(SECRET).issue("bench", SCOPES)
        auth = f"Authorization: Bearer {token}\r\nAccept: application/fhir+json\r\n"
        rng = random.Random(3)
        reads = [f"/fhir/Patient/{rng.choice(ids)}" for _ in range(5000)]
        searches = [
            f"/fhir/Patient?identifier={MRN_SYSTEM}%7CMRN{rng.randrange(len(ids)):08d}"
            for _ in range(5000)
        ]
        questionnaire = json.loads(INTAKE_QUESTIONNAIRE.read_text(encoding="utf-8"))
        populates = [
            (
                "/fhir/Questionnaire/$populate",
                json.dumps(
                    {
                        "resourceType": "Parameters",
                        "parameter": [
                            {"name": "questionnaire", "resource": questionnaire},
                            {"name": "subject", "valueReference": {"reference": f"Patient/{i}"}},
                        ],
                    }
                ).encode(),
            )
            for i in (rng.choice(ids) for _ in range(500))
        ]
        results: dict[str, dict[str, float]] = {}
        measurements: tuple[tuple[str, Sequence[str | tuple[str, bytes]]], ...] = (
            ("read", reads),
            ("search", searches),
            ("populate", populates),
            ("bare", [BARE_PATH]),
        )
        for label, paths in measurements:
            asyncio.run(measure("127.0.0.1", port, auth, paths, args.clients, WARMUP_S))
            results[label] = asyncio.run(
                measure("127.0.0.1", port, auth, paths, args.clients, seconds)
            )
            print(
                label, json.dumps({k: round(v, 2) for k, v in results[label].items()}), flush=True
            )
        summary = {
            "read_rps": round(results["read"]["rps"], 1),
            "read_p99_ms": round(results["read"]["p99_ms"], 2),
            "search_rps": round(results["search"]["rps"], 1),
            "search_p99_ms": round(results["search"]["p99_ms"], 2),
            "populate_rps": round(results["populate"]["rps"], 1),
            "populate_p99_ms": round(results["populate"]["p99_ms"], 2),
            "bare_rps": round(results["bare"]["rps"], 1),
            "ratio": round(results["read"]["rps"] / results["bare"]["rps"], 3),
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
