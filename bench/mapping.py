"""Benchmark: parse + validate + normalize FHIR Patients, against validation alone.

Generates Patients with ``tools.ehrgen`` (mixed locales: US, German, Lithuanian,
Vietnamese, Arabic/Persian transliterations; nicknames, typos, moved addresses), then,
in the same process, times

- ``fhir.resources.R4B`` validation alone (``Patient.model_validate``), and
- ``fhir_mapping.parse_patient`` (validation + the extra FHIR checks + normalization),

each over the same records, best of ``--repeat`` runs, with the normalization caches
cleared before every run of ours. The last line printed is the JSON summary::

    {"per_s": ..., "validate_only_per_s": ..., "overhead": ...}

where ``overhead = our time / validation-only time - 1`` (target: <= 0.5).

Usage: ``.venv/bin/python -m bench.mapping [--patients 50000] [--repeat 2]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fhir.resources.R4B.patient import Patient

from fhir_mapping import contact, identifiers, names, parse_patient, search
from tools.ehrgen import generate

DEFAULT_PATIENTS = 50_000
DEFAULT_REPEAT = 2
DEFAULT_SEED = 20261122
#: ehrgen writes each person into 1-3 sources; this many people yield enough Patients.
PATIENTS_PER_PERSON_LOWER_BOUND = 2
WARMUP = 200


def generated_patients(count: int, seed: int) -> list[dict[str, Any]]:
    people = count // PATIENTS_PER_PERSON_LOWER_BOUND + 1
    generated = generate(people, seed=seed)
    patients = [p for batch in generated.patients_by_source.values() for p in batch]
    while len(patients) < count:  # a very unlucky seed: top up with more people
        more = generate(people, seed=seed + len(patients))
        patients.extend(p for batch in more.patients_by_source.values() for p in batch)
    return patients[:count]


def clear_caches() -> None:
    for cached in (
        search.fold_text,
        names.nickname_key,
        names.phonetic_key,
        names._name_features,
        contact._parse_phone,
        contact.normalize_line,
        contact._lines_normalized,
        contact.normalize_country,
        contact.normalize_postal_code,
    ):
        cached.cache_clear()


def timed(run: Callable[[], None], repeat: int, before: Callable[[], None] | None) -> float:
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS)
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)

    patients = generated_patients(args.patients, args.seed)
    print(f"generated {len(patients)} Patients", file=sys.stderr)
    identifiers.classify_identifier(None, None, None)  # load the data tables once

    def validate_only() -> None:
        for raw in patients:
            Patient.model_validate(raw)

    def ours() -> None:
        for raw in patients:
            parse_patient(raw)

    for raw in patients[:WARMUP]:
        Patient.model_validate(raw)
        parse_patient(raw)
    validate_s = timed(validate_only, args.repeat, None)
    ours_s = timed(ours, args.repeat, clear_caches)
    n = len(patients)
    print(
        json.dumps(
            {
                "patients": n,
                "per_s": round(n / ours_s, 1),
                "validate_only_per_s": round(n / validate_s, 1),
                "overhead": round(ours_s / validate_s - 1, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
