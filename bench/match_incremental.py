"""Incremental resolution latency against a large golden-record base (SQLite file).

The base is built in bulk: ``tools.ehrgen`` people from one EHR are parsed, resolved in
memory by :func:`mpi.resolve_batch` (the same decisions as the real-time engine) and
written with set-based inserts: source records (with their normalized JSON), golden
records, links and block keys. Golden search tokens and field provenance are not written
in the bulk path (matching never reads them).

Then records from a second EHR (about half are people already in the base, half are new)
are resolved one at a time through :func:`mpi.resolve_patients`, each in its own
transaction, with a cold feature cache: the time of ``resolve_patients`` plus the commit
is what is measured (storing the source record itself is the sync pipeline's cost), after
a few untimed resolutions that load the model, as a worker does once at start-up.

Usage (the last line is JSON: ``incremental_p50_ms``, ``incremental_p99_ms``…)::

    .venv/bin/python -m bench.match_incremental [--golden 200000] [--probes 1000]
        [--db /tmp/base.db]

With ``--db`` the base is kept in that file and reused when it exists; the timed
resolutions then run on a temporary copy, so the kept base is never modified.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from fhir_mapping import parse_patient
from mpi import MatchSettings, extract_features, resolve_batch, resolve_patients, train_model
from mpi.blocking import block_keys
from mpi.storage import clear_caches, save_model
from store import make_engine, make_session_factory, upgrade
from store.bulk import chunks
from store.models import BlockKey, GoldenPatient, Link, Source, SourceRecord, new_uuid
from tools.ehrgen import generate

#: Rows per INSERT batch in the bulk path.
BULK_BATCH = 20_000
#: Records the model is trained on before the bulk resolution.
TRAINING_SAMPLE = 20_000
#: Resolutions done before timing starts: a worker loads the model and compiles its SQL
#: once, at its start (the first record down a rare path costs ~70 ms of compilation).
WARMUP = 30
#: Records of the second EHR kept as probes (the rest of the bulk data is let go).
PROBE_POOL = 2_000
#: Golden records in the base, and one-record resolutions timed (``main``).
DEFAULT_GOLDEN = 200_000
DEFAULT_PROBES = 1_000
DEFAULT_SEED = 7
#: ehrgen people generated per golden record wanted (some appear only in the second EHR).
PEOPLE_PER_GOLDEN = 1.0


def build_base(path: Path, golden: int, seed: int) -> tuple[str, list[dict[str, Any]], int]:
    """Create the database; returns its URL, the probe resources and the golden count."""
    url = f"sqlite:///{path}"
    upgrade(url)
    data = generate(int(golden * PEOPLE_PER_GOLDEN), seed=seed, sources=2)
    base = data.patients_by_source["ehr-a"]
    patients = [parse_patient(r) for r in base]
    features = [extract_features(p) for p in patients]
    settings = MatchSettings()
    sample = random.Random(seed).sample(features, min(TRAINING_SAMPLE, len(features)))
    model = train_model(sample, settings, seed=seed)
    result = resolve_batch(features, model, settings)
    uuids = {g: new_uuid() for g in result.clusters}
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        save_model(session, model)
        session.add_all(
            [
                Source(id=1, name="ehr-a", kind="ndjson", base_url="file:///a"),
                Source(id=2, name="ehr-b", kind="ndjson", base_url="file:///b"),
            ]
        )
        session.flush()
        records = [
            {
                "id": i + 1,
                "source_id": 1,
                "resource_type": "Patient",
                "resource_id": r["id"],
                "raw": r,
                "normalized": p.to_dict(),
                "status": "active",
                "content_hash": hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest(),
            }
            for i, (r, p) in enumerate(zip(base, patients, strict=True))
        ]
        for chunk in chunks(records, BULK_BATCH):
            session.execute(insert(SourceRecord), chunk)
        goldens = []
        for g, members in result.clusters.items():
            resource = dict(base[members[0]], id=uuids[g])
            goldens.append(
                {
                    "id": uuids[g],
                    "version": 1,
                    "resource": resource,
                    "status": "active",
                    "birth_date": resource.get("birthDate"),
                    "gender": resource.get("gender"),
                }
            )
        for chunk in chunks(goldens, BULK_BATCH):
            session.execute(insert(GoldenPatient), chunk)
        links = [
            {
                "source_record_id": i + 1,
                "golden_id": uuids[g],
                "grade": "certain",
                "method": "AUTO",
                "flagged": False,
                "explanation": {},
            }
            for i, g in enumerate(result.golden_ids)
        ]
        for chunk in chunks(links, BULK_BATCH):
            session.execute(insert(Link), chunk)
        keys = [
            {"key": k, "source_record_id": i + 1}
            for i, f in enumerate(features)
            for k in block_keys(f)
        ]
        for chunk in chunks(keys, BULK_BATCH):
            session.execute(insert(BlockKey), chunk)
        session.commit()
    engine.dispose()
    probes = random.Random(seed).sample(data.patients_by_source["ehr-b"], PROBE_POOL)
    return url, probes, len(result.clusters)


def time_incremental(
    url: str, probes: list[dict[str, Any]], count: int, seed: int
) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds of each one-record resolution (resolve + commit),
    cold caches. CPU time tells the engine's cost apart from a busy machine's queueing.

    The database file is synced to disk first: a base just built or copied is dirty in
    the page cache, and the first checkpoint's fsync (in the background thread, or in
    a commit) would otherwise write the whole file out while records are timed."""
    _sync_file(url.removeprefix("sqlite:///"))
    engine = make_engine(url)
    factory = make_session_factory(engine)
    clear_caches()
    chosen = random.Random(seed).sample(probes, min(count + WARMUP, len(probes)))
    timings: list[float] = []
    cpu: list[float] = []
    settings = MatchSettings()
    for n, resource in enumerate(chosen):
        if n == WARMUP:
            # Like a worker after start-up (and the gateway, see gateway/app.py): what is
            # alive now stays alive, so the cyclic GC need not walk it on every collection.
            gc.collect()
            gc.freeze()
        with factory() as session:
            patient = parse_patient(resource)
            row = SourceRecord(
                source_id=2,
                resource_type="Patient",
                resource_id=resource["id"],
                raw=resource,
                normalized=patient.to_dict(),
                status="active",
            )
            session.add(row)
            session.flush()
            started, started_cpu = time.perf_counter(), time.process_time()
            resolve_patients(session, [(row, patient)], settings=settings)
            session.commit()
            if n >= WARMUP:  # the first ones load the model and fill SQLAlchemy's caches
                timings.append((time.perf_counter() - started) * 1000)
                cpu.append((time.process_time() - started_cpu) * 1000)
    engine.dispose()
    gc.unfreeze()
    return timings, cpu


def _sync_file(path: str) -> None:
    for name in (path, f"{path}-wal"):
        if os.path.exists(name):
            descriptor = os.open(name, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    """Build (or reuse, ``--db``) the base and print the latency summary as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=int, default=DEFAULT_GOLDEN)
    parser.add_argument("--probes", type=int, default=DEFAULT_PROBES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--db", type=Path, help="keep the base here and reuse it next time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = args.db or Path(folder) / "incremental.db"
        meta = path.with_suffix(".probes.json")
        started = time.perf_counter()
        if args.db is not None and path.exists() and meta.exists():
            url = f"sqlite:///{path}"
            stored = json.loads(meta.read_text())
            probes, goldens = stored["probes"], stored["goldens"]
        else:
            url, probes, goldens = build_base(path, args.golden, args.seed)
            if args.db is not None:
                meta.write_text(json.dumps({"probes": probes, "goldens": goldens}))
        build_s = time.perf_counter() - started
        if args.db is not None:
            # The timed resolutions write (probe records, links, golden records): they
            # run on a copy, so the kept base stays as built and the same probes can be
            # resolved against it again next time.
            work = Path(folder) / "incremental-run.db"
            shutil.copyfile(path, work)
            wal = path.with_name(path.name + "-wal")
            if wal.exists():  # not checkpointed yet: the copy needs it too
                shutil.copyfile(wal, work.with_name(work.name + "-wal"))
            url = f"sqlite:///{work}"
        timings, cpu = time_incremental(url, probes, args.probes, args.seed)
    print(
        f"{len(timings)} records against {goldens} golden records (base ready in {build_s:.0f} s)",
        file=sys.stderr,
    )
    summary = {
        "incremental_p50_ms": round(percentile(timings, 0.5), 2),
        "incremental_p99_ms": round(percentile(timings, 0.99), 2),
        "incremental_max_ms": round(max(timings), 2),
        "incremental_cpu_p50_ms": round(percentile(cpu, 0.5), 2),
        "incremental_cpu_p99_ms": round(percentile(cpu, 0.99), 2),
        "golden_records": goldens,
        "probes": len(timings),
        "backend": "sqlite",
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
