"""Source lifecycle benchmark: re-rank a source, then remove one, after a three-source load.

``python -m bench.source_removal [--patients N] [--backend postgresql]`` generates N
source Patients over ``ehr-a``/``ehr-b``/``ehr-c`` (``tools.ehrgen``, as
``bench.ingest`` does, with its Encounters), syncs them, then times:

- a new trust rank for ``ehr-b``: every golden record it feeds rendered again
  (``sync.refresh_goldens``; a new version only where the rendering changed);
- the removal of ``ehr-a`` (``sync.remove_source``): its Encounters and Patients deleted
  from the golden records (each golden record rebuilt from the other two sources, the
  events written), then its records and the source erased.

The last line is JSON: ``goldens_refreshed_per_s``, ``records_removed_per_s`` (live
records taken out of the golden records per second of the whole removal, erasing
included), their counts and times, ``peak_rss_mb`` and ``backend``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from bench.ingest import (
    DEFAULT_ENCOUNTERS_PER_PATIENT,
    DEFAULT_PG_ADMIN_URL,
    DEFAULT_SEED,
    database_url,
    generate_data,
    peak_rss_mb,
    register_sources,
    sync_all,
)
from store import make_engine, make_session_factory
from store.db import stop_checkpointers
from sync import (
    SourceChange,
    TaskContext,
    refresh_goldens,
    remove_source,
    update_source,
    wait_for_statistics,
)

DEFAULT_PATIENTS = 10_000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="askonce-bench-") as tmp:
        workdir = Path(tmp)
        data = workdir / "data"
        generate_data(data, args.patients, DEFAULT_ENCOUNTERS_PER_PATIENT, args.seed)
        url, cleanup = database_url(args.backend, args.pg_url, workdir)
        try:
            engine = make_engine(url)
            sessions = make_session_factory(engine)
            context = TaskContext(engine=engine, session_factory=sessions)
            source_ids = register_sources(sessions, data)
            sync_all(context, source_ids, full=False, label="sync")
            with sessions() as session:
                update_source(session, source_ids["ehr-b"], SourceChange(trust_rank=99))
                session.commit()
            started = time.perf_counter()
            refreshed = refresh_goldens(sessions, source_ids["ehr-b"])
            refresh_s = time.perf_counter() - started
            print(
                f"re-rank ehr-b: {refreshed.examined} golden records rendered again, "
                f"{refreshed.rewritten} changed, in {refresh_s:.1f} s",
                flush=True,
            )
            started = time.perf_counter()
            removed = remove_source(sessions, source_ids["ehr-a"])
            remove_s = time.perf_counter() - started
            deleted = sum(removed.deleted.values())
            print(
                f"remove ehr-a: {removed.deleted} deleted from the golden records, "
                f"{removed.erased} records erased, in {remove_s:.1f} s",
                flush=True,
            )
            wait_for_statistics()
            engine.dispose()
            stop_checkpointers()
        finally:
            cleanup()
    summary = {
        "goldens_refreshed": refreshed.examined,
        "goldens_rewritten": refreshed.rewritten,
        "refresh_s": round(refresh_s, 2),
        "goldens_refreshed_per_s": round(refreshed.examined / refresh_s, 1),
        "records_removed": deleted,
        "remove_s": round(remove_s, 2),
        "records_removed_per_s": round(deleted / remove_s, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "backend": args.backend,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
