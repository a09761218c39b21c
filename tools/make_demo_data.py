"""Generate the demo data bundled in ``askonce/demo_data`` (run once, output committed).

Three EHRs (``ehr-a``, ``ehr-b``, ``ehr-c``) with about 300 people between them, the
realistic duplicates and hard negatives of :mod:`tools.ehrgen` and about two
encounters per record, plus two deliberately broken resources so that the demo shows
quarantine at work (a Patient with an impossible birth date, an Encounter with an
unknown status code).

Usage: ``python -m tools.make_demo_data [--out askonce/demo_data]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from tools.ehrgen import generate, write_ndjson

DEMO_PEOPLE = 300
DEMO_SEED = 20261122
DEMO_ENCOUNTERS_PER_PATIENT = 2.0
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "askonce" / "demo_data"

#: Resources a real feed sends now and then; they end up quarantined with their reason.
BROKEN_RESOURCES: dict[str, dict[str, list[dict[str, Any]]]] = {
    "ehr-b": {
        "Patient": [
            {
                "resourceType": "Patient",
                "id": "b-broken-1",
                "name": [{"family": "Invalid", "given": ["Birthdate"]}],
                "birthDate": "1980-13-45",
            }
        ],
        "Encounter": [
            {
                "resourceType": "Encounter",
                "id": "b-broken-e1",
                "status": "no-such-status",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
            }
        ],
    }
}


def _append(path: Path, resources: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for resource in resources:
            handle.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n")


def make_demo_data(out: Path) -> dict[str, Path]:
    """Write the demo sources under ``out``; returns each source's folder."""
    if out.exists():
        shutil.rmtree(out)
    generated = generate(
        DEMO_PEOPLE, seed=DEMO_SEED, encounters_per_patient=DEMO_ENCOUNTERS_PER_PATIENT
    )
    folders = write_ndjson(generated, out)
    for source, by_type in BROKEN_RESOURCES.items():
        for resource_type, resources in by_type.items():
            _append(folders[source] / f"{resource_type}.ndjson", resources)
    return folders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for source, folder in make_demo_data(args.out).items():
        print(source, folder)


if __name__ == "__main__":
    main()
