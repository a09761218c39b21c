"""Benchmark: an HL7 v2 ADT feed over MLLP into a fresh database, message by message.

A hospital's interface engine sends one message, waits for its ACK, then sends the
next (original-mode acknowledgment over one connection). This benchmark plays that
engine from a child process (so its work does not share this process's GIL) against
:class:`sync.mllp_listener.MllpService` on a free loopback port, and times each message
from the moment it is written to the moment its ACK has been read. The feed: ``--people``
people, each registered (A04), admitted with a visit (A01), updated (A08, a new phone)
and discharged (A03): four messages a person, so about a quarter of them create a
golden record and the rest update one. Each message is one transaction (ingest, MPI,
outbox, commit) before its ACK goes out.

The last line printed is the JSON summary::

    {"messages": ..., "messages_per_s": ..., "ack_p50_ms": ..., "ack_p99_ms": ...,
     "accepted": ..., "peak_rss_mb": ..., "backend": "sqlite" | "postgresql", "tls": ...}

Usage::

    .venv/bin/python -m bench.mllp [--people 500] [--backend sqlite|postgresql] [--tls]

``--tls`` serves the feed inside TLS (a throwaway CA and listener certificate,
:mod:`tools.pki`), so the handshake and each message's encryption are in the times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import DEFAULT_PG_ADMIN_URL, database_url, peak_rss_mb
from store import make_engine, make_session_factory
from store.db import stop_checkpointers
from store.repositories import SourceRepository
from sync.hl7intake import TLS_CERT_KEY, TLS_KEY_KEY, tls_context
from sync.mllp_listener import Listener, MllpService
from tools.ehrgen_data import CITIES, FAMILY, GIVEN, STREETS
from tools.pki import loopback_listener

DEFAULT_PEOPLE = 500
DEFAULT_SEED = 20261123
START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\r"


def feed(people: int, seed: int) -> list[str]:
    """The messages, in the order an ADT feed would send them."""
    rng = random.Random(seed)
    out: list[str] = []
    for n in range(people):
        sex = rng.choice(("male", "female"))
        given = rng.choice(GIVEN["us"][sex])
        family = rng.choice(FAMILY["us"])
        city, state, prefix = rng.choice(CITIES["us"])
        birth = f"{rng.randint(1930, 2020)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        street = f"{rng.randint(1, 999)} {rng.choice(STREETS['us'])}"
        address = f"{street}^^{city}^{state}^{prefix}{n % 100:02d}^USA^H"
        phones = [f"(617)555-{rng.randint(0, 9999):04d}", f"(617)555-{rng.randint(0, 9999):04d}"]
        for step, (event, phone, discharge) in enumerate(
            (("A04", phones[0], ""), ("A01", phones[0], ""), ("A08", phones[1], ""),
             ("A03", phones[1], "20250302120000"))
        ):  # fmt: skip
            ts = f"202503010{step}{n % 60:02d}00"
            pid = (
                f"PID|1||MRN{n:07d}^^^GENHOSP^MR||{family}^{given}^^^^^L||{birth}|{sex[0].upper()}"
                f"|||{address}||{phone}^PRN^PH"
            )
            pv1 = (
                "PV1|1|I"
                + "|" * 17
                + f"V{n:07d}^^^GENHOSP^VN"
                + "|" * 25
                + f"20250301080000|{discharge}"
            )
            msh = f"MSH|^~\\&|EHR|GENHOSP|ASKONCE|HUB|{ts}||ADT^{event}^ADT_A01|M{n}-{step}|P|2.5.1"
            segments = [msh, f"EVN|{event}|{ts}", pid]
            if event != "A04":
                segments.append(pv1)
            out.append("\r".join(segments) + "\r")
    return out


CLIENT = r"""
import json, socket, ssl, sys, time
port, path = int(sys.argv[1]), sys.argv[2]
messages = json.load(open(path))
sock = socket.create_connection(("127.0.0.1", port))
if len(sys.argv) > 3:  # the CA that signed the listener's certificate: TLS
    tls = ssl.create_default_context(cafile=sys.argv[3])
    sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
times, codes, buffer = [], [], b""
for text in messages:
    start = time.perf_counter()
    sock.sendall(b"\x0b" + text.encode() + b"\x1c\r")
    while b"\x1c\r" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("connection closed")
        buffer += chunk
    block, _, buffer = buffer.partition(b"\x1c\r")
    times.append(time.perf_counter() - start)
    codes.append(block.decode().split("\rMSA|", 1)[1][:2])
sock.close()
print(json.dumps({"times": times, "codes": codes}))
"""


async def serve_and_send(
    url: str, messages: list[str], workdir: Path, *, tls: bool = False
) -> dict[str, Any]:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with factory() as session:
        source = SourceRepository(session).add(
            name="adt", kind="hl7v2", base_url="mllp://127.0.0.1:0", resource_types=["Patient"]
        )
        session.commit()
        source_id = source.id
    trust: list[str] = []
    context = None
    if tls:
        ca, cert, key = loopback_listener(workdir)
        context = tls_context({TLS_CERT_KEY: str(cert), TLS_KEY_KEY: str(key)})
        trust = [str(ca)]
    target = Listener(source_id, "adt", "127.0.0.1", 0, context)
    service = MllpService(factory)
    await service.open([target])
    port = service.address(source_id)[1]
    feed_path = workdir / "feed.json"
    feed_path.write_text(json.dumps(messages))
    started = time.perf_counter()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), str(feed_path), *trust, stdout=subprocess.PIPE
    )
    out, _ = await child.communicate()
    wall = time.perf_counter() - started
    await service.close()
    stop_checkpointers()
    engine.dispose()
    if child.returncode != 0:
        raise SystemExit(f"client failed ({child.returncode})")
    result: dict[str, Any] = json.loads(out)
    result["wall_s"] = wall
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=DEFAULT_PEOPLE)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--tls", action="store_true", help="MLLP inside TLS (a throwaway CA)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    messages = feed(args.people, args.seed)
    with tempfile.TemporaryDirectory(prefix="askonce-bench-mllp-") as tmp:
        workdir = Path(tmp)
        url, drop = database_url(args.backend, args.pg_url, workdir)
        try:
            result = asyncio.run(serve_and_send(url, messages, workdir, tls=args.tls))
        finally:
            drop()
    times_ms = sorted(t * 1000 for t in result["times"])
    summary = {
        "messages": len(messages),
        "messages_per_s": round(len(messages) / result["wall_s"], 1),
        "ack_p50_ms": round(statistics.median(times_ms), 2),
        "ack_p99_ms": round(times_ms[int(len(times_ms) * 0.99) - 1], 2),
        "accepted": sum(code == "AA" for code in result["codes"]),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "backend": args.backend,
        "tls": args.tls,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    main()
