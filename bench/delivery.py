"""Delivery benchmark: change events from the outbox to a FHIR Subscription and a webhook.

``python -m bench.delivery [--events N] [--backend postgresql]`` writes N outbox events
(half ``patient.updated``, half ``encounter.created``, ids only, as a sync writes them)
for one consumer that has a FHIR Subscription to each topic (``id-only``, the default
``maxCount`` of 50) and a webhook (one signed message per event). The receiver is a
plain HTTP server on a loopback port in a process of its own, answering 200. Timed:

- the fan-out: every event handed to the subscriptions it matches (``sync.delivery.fan_out``);
- each queue sent to its endpoint (``sync.delivery.send_subscription``);
- the retention (``sync.retention.prune``) deleting every event and queue row once all
  of them are received and past it.

The last line is JSON: ``fan_out_events_per_s``, ``fhir_events_per_s`` (events of both
topics' notifications per second), ``webhook_events_per_s``, ``prune_events_per_s``, the
counts and times, ``peak_rss_mb`` and ``backend``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import tempfile
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, update

from bench.ingest import DEFAULT_PG_ADMIN_URL, database_url, peak_rss_mb
from gateway.auth.consumers import register_consumer
from store import make_engine, make_session_factory, unit_of_work
from store.bulk import chunks
from store.db import stop_checkpointers
from store.models import Outbox, Subscription
from store.types import utcnow
from sync.delivery import (
    ENCOUNTER_TOPIC,
    PATIENT_TOPIC,
    DeliveryReport,
    apply_spec,
    fan_out,
    send_subscription,
    subscription_spec,
)
from sync.retention import prune

DEFAULT_EVENTS = 20_000
SCOPES = ["system/Patient.rs", "system/Encounter.rs", "system/Subscription.cruds"]


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _serve(port: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    port.value = server.server_address[1]
    server.serve_forever()


def _subscription(topic: str, endpoint: str) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "bench",
        "criteria": topic,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/json"},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    port = multiprocessing.Value("i", 0)
    receiver = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    receiver.start()
    while not port.value:
        time.sleep(0.01)
    endpoint = f"http://127.0.0.1:{port.value}/hook"
    with tempfile.TemporaryDirectory(prefix="askonce-bench-") as tmp:
        url, cleanup = database_url(args.backend, args.pg_url, Path(tmp))
        try:
            engine = make_engine(url)
            sessions = make_session_factory(engine)
            with unit_of_work(sessions) as session:
                creds = register_consumer(session, "crm", "crm", SCOPES, endpoint)
                fhir_ids = []
                for topic in (PATIENT_TOPIC.url, ENCOUNTER_TOPIC.url):
                    resource = _subscription(topic, endpoint)
                    sub = Subscription(consumer_id=creds.consumer_id, events_since_start=0)
                    apply_spec(sub, subscription_spec(resource), resource)
                    sub.status = "active"  # the handshake is not what is measured
                    session.add(sub)
                    session.flush()
                    fhir_ids.append(sub.id)
                webhook_id = (
                    session.query(Subscription.id).filter_by(channel_type="webhook").scalar()
                )
            now = utcnow()
            rows = []
            for n in range(args.events):
                golden = f"g{n // 2}"
                if n % 2:
                    rows.append(
                        {
                            "event_type": "encounter.created",
                            "aggregate_type": "Encounter",
                            "aggregate_id": str(n),
                            "payload": {"encounter_id": n, "golden_id": golden},
                        }
                    )
                else:
                    rows.append(
                        {
                            "event_type": "patient.updated",
                            "aggregate_type": "Patient",
                            "aggregate_id": golden,
                            "payload": {"golden_id": golden, "version": 2},
                        }
                    )
            for part in chunks(rows, 5000):
                with unit_of_work(sessions) as session:
                    session.execute(
                        insert(Outbox),
                        [{**r, "created_at": now, "next_attempt_at": now} for r in part],
                    )

            started = time.perf_counter()
            handed = queued = 0
            while True:
                with unit_of_work(sessions) as session:
                    step = fan_out(session)
                handed += step.events
                queued += step.queued
                if not step.events:
                    break
            fan_out_s = time.perf_counter() - started
            print(f"fan-out: {handed} events, {queued} queued, in {fan_out_s:.1f} s", flush=True)

            timings: dict[str, tuple[int, float]] = {}
            with httpx.Client() as client:
                for label, ids in (("fhir", fhir_ids), ("webhook", [webhook_id])):
                    report = DeliveryReport()
                    started = time.perf_counter()
                    for sub_id in ids:
                        send_subscription(
                            sessions,
                            sub_id,
                            client,
                            report,
                            deadline=utcnow() + timedelta(hours=1),
                        )
                    seconds = time.perf_counter() - started
                    timings[label] = (report.events_delivered, seconds)
                    print(
                        f"{label}: {report.events_delivered} events in {report.notifications} "
                        f"notifications, {report.failures} failures, in {seconds:.1f} s",
                        flush=True,
                    )

            # Retention: every event received by all three, then past the retention.
            with unit_of_work(sessions) as session:
                session.execute(update(Outbox).values(created_at=now - timedelta(days=31)))
            started = time.perf_counter()
            pruned = prune(sessions, outbox_days=30, run_days=0, max_seconds=3600)
            prune_s = time.perf_counter() - started
            print(
                f"prune: {pruned.outbox_events} events, {pruned.queue_rows} queue rows, "
                f"in {prune_s:.1f} s",
                flush=True,
            )
            engine.dispose()
            stop_checkpointers()
        finally:
            cleanup()
            receiver.terminate()
    fhir_events, fhir_s = timings["fhir"]
    webhook_events, webhook_s = timings["webhook"]
    summary = {
        "events": args.events,
        "fan_out_s": round(fan_out_s, 2),
        "fan_out_events_per_s": round(handed / fan_out_s, 1),
        "fhir_events": fhir_events,
        "fhir_s": round(fhir_s, 2),
        "fhir_events_per_s": round(fhir_events / fhir_s, 1),
        "webhook_events": webhook_events,
        "webhook_s": round(webhook_s, 2),
        "webhook_events_per_s": round(webhook_events / webhook_s, 1),
        "prune_events": pruned.outbox_events,
        "prune_queue_rows": pruned.queue_rows,
        "prune_s": round(prune_s, 2),
        "prune_events_per_s": round(pruned.outbox_events / prune_s, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "backend": args.backend,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
