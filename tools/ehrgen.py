"""Synthetic EHR-like Patients and Encounters, with duplicates across sources and a truth file.

``generate(people, seed=...)`` invents people from mixed locales (US, German, Lithuanian,
Vietnamese, Arabic/Persian transliterations) and writes each of them into one to three
sources (``ehr-a``, ``ehr-b``, ``ehr-c``) the way real registration desks do: nicknames,
typos, married-name changes, moved addresses, day/month transpositions, lost diacritics
and missing fields. Hard negatives are planted on purpose: twins, Jr/Sr pairs, spouses and
namesakes (same name, same birth date, different person).

Every Patient and Encounter is valid FHIR R4 JSON (https://hl7.org/fhir/R4/patient.html,
https://hl7.org/fhir/R4/encounter.html).

Truth CSV (``truth.csv``, read by ``askonce match evaluate --truth FILE``), one row per
source Patient, with a header::

    source,resource_type,resource_id,person_id,tags
    ehr-a,Patient,a-000017,p000012,twin|locale-us|nickname

``person_id`` names the real person; two rows with the same ``person_id`` must end up in
one golden record and rows with different ones must not. ``tags`` is ``|``-separated:
``locale-<xx>`` and the hard-negative kind of the person (``twin``, ``jr-sr``, ``spouse``,
``namesake``), plus the corruptions applied to that record (``nickname``, ``typo``,
``married-name``, ``moved``, ``dm-transposed``, ``dob-off``, ``no-diacritics``,
``name-order``, ``missing-phone``, ``missing-address``…).

Usage: ``python -m tools.ehrgen --people 300 --seed 7 --out demo-data/`` writes
``<out>/<source>/Patient.ndjson``, ``<out>/<source>/Encounter.ndjson`` and ``<out>/truth.csv``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from tools.ehrgen_data import CITIES, FAMILY, GIVEN, NICKNAMES, STREETS

SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"
KVID_SYSTEM = "http://fhir.de/sid/gkv/kvid-10"
LT_ID_SYSTEM = "urn:oid:1.3.6.1.4.1.58267.1.1"  # illustrative national-id system for Lithuania
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
TRUTH_COLUMNS = ("source", "resource_type", "resource_id", "person_id", "tags")
SOURCE_LETTERS = "abcdefghij"
SSN_AREA_INVALID = 666
MONTHS = 12
LAST_UPDATED = "2026-01-15T09:30:00Z"
TODAY = date(2026, 1, 15)

#: How many of the sources a person appears in: (count, probability).
SOURCES_PER_PERSON = ((1, 0.2), (2, 0.4), (3, 0.4))
#: Share of people who bring a planted hard negative along.
HARD_NEGATIVE_RATES = {"twin": 0.03, "jr-sr": 0.02, "spouse": 0.04, "namesake": 0.02}
#: Probability that one record of a person carries each corruption.
CORRUPTION_RATES = {
    "nickname": 0.10,
    "typo": 0.08,
    "married-name": 0.25,  # of adult women's records after the first
    "moved": 0.15,
    "dm-transposed": 0.03,
    "dob-off": 0.02,
    "no-diacritics": 0.4,
    "name-order": 0.15,  # Vietnamese records only
    "intra-duplicate": 0.03,
}
MISSING_RATES = {"phone": 0.15, "email": 0.35, "address": 0.08, "gender": 0.03, "ssn": 0.3}
LOCALE_WEIGHTS = {"us": 0.45, "de": 0.15, "lt": 0.1, "vi": 0.15, "ar": 0.15}


_PHONE = {
    "us": ("+1", ("415", "617", "212", "312", "713", "206", "313")),
    "de": ("+49", ("30", "89", "221", "1512", "1761")),
    "lt": ("+370", ("6",)),
}
_HOME = {"us": "us", "vi": "us", "ar": "us", "de": "de", "lt": "lt"}
_COUNTRY = {"us": "US", "de": "DE", "lt": "LT"}
_FOLD = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})


@dataclass
class TruthRow:
    """One source Patient and the real person it belongs to."""

    source: str
    resource_type: str
    resource_id: str
    person_id: str
    tags: list[str] = field(default_factory=list)


@dataclass
class Generated:
    """What :func:`generate` returns: FHIR JSON per source, and the truth."""

    patients_by_source: dict[str, list[dict[str, Any]]]
    encounters_by_source: dict[str, list[dict[str, Any]]]
    truth: list[TruthRow]


@dataclass
class _Person:
    pid: str
    locale: str
    gender: str
    given: str  # may hold "/"-separated transliteration variants
    family: str
    birth: date
    address: dict[str, Any]
    phone: str
    email: str
    ssn: str | None
    national_id: tuple[str, str] | None
    suffix: str | None = None
    tags: list[str] = field(default_factory=list)


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _variant(rng: random.Random, value: str) -> str:
    return rng.choice(value.split("/"))


def _address(rng: random.Random, locale: str) -> dict[str, Any]:
    home = _HOME[locale]
    city, state, zip_prefix = rng.choice(CITIES[home])
    street = rng.choice(STREETS[home])
    number = rng.randint(1, 2400 if home == "us" else 160)
    zip_len = {"us": 5, "de": 5, "lt": 8}[home]
    postal = zip_prefix + "".join(str(rng.randint(0, 9)) for _ in range(zip_len - len(zip_prefix)))
    line = f"{number} {street}" if home == "us" else f"{street} {number}"
    if home == "us" and rng.random() < 0.2:
        line += f" Apt {rng.randint(1, 40)}"
    out: dict[str, Any] = {"use": "home", "line": [line], "city": city, "postalCode": postal}
    if state:
        out["state"] = state
    out["country"] = _COUNTRY[home]
    return out


def _phone(rng: random.Random, locale: str) -> str:
    prefix, areas = _PHONE[_HOME[locale]]
    area = rng.choice(areas)
    if prefix == "+1":
        return f"({area}) {rng.randint(201, 989)}-{rng.randint(1000, 9999)}"
    if prefix == "+370":
        return f"{prefix} {area}{rng.randint(1000000, 9999999)}"
    return f"{prefix} {area} {rng.randint(1000000, 9999999)}"


def _ssn(rng: random.Random) -> str:
    area = rng.randint(1, 898)
    area += area >= SSN_AREA_INVALID  # 666 is never issued
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _birth(rng: random.Random, *, min_age: int = 0, max_age: int = 95) -> date:
    days = rng.randint(min_age * 365, max_age * 365)
    return TODAY - timedelta(days=days)


def _new_person(rng: random.Random, pid: str, **fixed: Any) -> _Person:
    locale = fixed.pop("locale", None) or _pick(rng, LOCALE_WEIGHTS)
    gender = fixed.pop("gender", None) or rng.choice(["male", "female"])
    given = rng.choice(GIVEN[locale][gender])
    family = rng.choice(FAMILY[locale])
    national: tuple[str, str] | None = None
    if locale == "de":
        national = (KVID_SYSTEM, f"{chr(65 + rng.randint(0, 25))}{rng.randint(10**8, 10**9 - 1)}")
    elif locale == "lt":
        national = (LT_ID_SYSTEM, str(rng.randint(3 * 10**10, 6 * 10**10 - 1)))
    first = fold(given.split("/")[0]).split()[0].lower()
    person = _Person(
        pid=pid,
        locale=locale,
        gender=gender,
        given=given,
        family=family,
        birth=_birth(rng),
        address=_address(rng, locale),
        phone=_phone(rng, locale),
        email=f"{first}.{rng.randint(1, 99999)}@example.{'com' if locale != 'de' else 'de'}",
        ssn=_ssn(rng) if _HOME[locale] == "us" else None,
        national_id=national,
        tags=[f"locale-{locale}"],
    )
    for key, value in fixed.items():
        setattr(person, key, value)
    return person


def fold(value: str) -> str:
    """Strip diacritics the way a registration desk keyboard does ("ü" -> "ue", "ą" -> "a")."""
    import unicodedata

    value = value.translate(_FOLD).replace("Đ", "D").replace("đ", "d")
    return "".join(c for c in unicodedata.normalize("NFKD", value) if not unicodedata.combining(c))


def _typo(rng: random.Random, value: str) -> str:
    if len(value) < 4:
        return value
    i = rng.randint(1, len(value) - 2)
    kind = rng.randint(0, 2)
    if kind == 0:  # transpose two letters
        return value[:i] + value[i + 1] + value[i] + value[i + 2 :]
    if kind == 1:  # drop one
        return value[:i] + value[i + 1 :]
    return value[:i] + rng.choice("aeinorst") + value[i + 1 :]  # substitute one


def _hard_negatives(rng: random.Random, person: _Person, next_pid: Any) -> list[_Person]:
    """Plant the people a careless matcher would merge with ``person``."""
    extra: list[_Person] = []
    kind = _pick(rng, {**HARD_NEGATIVE_RATES, "": 1 - sum(HARD_NEGATIVE_RATES.values())})
    if kind == "twin":
        other = _new_person(rng, next_pid(), locale=person.locale)
        while other.given == person.given:
            other.given = rng.choice(GIVEN[person.locale][other.gender])
        other.family, other.birth, other.address = person.family, person.birth, person.address
        other.phone = person.phone
        extra.append(other)
    elif kind == "jr-sr":
        person.gender = "male"
        person.given = rng.choice(GIVEN[person.locale]["male"])
        person.birth = _birth(rng, min_age=1, max_age=40)
        other = _new_person(rng, next_pid(), locale=person.locale, gender="male")
        other.given, other.family, other.address = person.given, person.family, person.address
        other.phone = person.phone
        other.birth = person.birth - timedelta(days=rng.randint(20 * 365, 40 * 365))
        person.suffix, other.suffix = "Jr", "Sr"
        extra.append(other)
    elif kind == "spouse":
        other = _new_person(rng, next_pid(), locale=person.locale)
        other.gender = "female" if person.gender == "male" else "male"
        other.given = rng.choice(GIVEN[person.locale][other.gender])
        other.family, other.address, other.phone = person.family, person.address, person.phone
        extra.append(other)
    elif kind == "namesake":
        other = _new_person(rng, next_pid(), locale=person.locale, gender=person.gender)
        other.given, other.family, other.birth = person.given, person.family, person.birth
        extra.append(other)
    if kind:
        person.tags.append(kind)
        for other in extra:
            other.tags.append(kind)
    return extra


def _record(
    rng: random.Random, person: _Person, source: str, rid: str, *, first: bool
) -> tuple[dict[str, Any], list[str]]:
    """One source's copy of ``person`` (FHIR Patient JSON) and the corruption tags."""
    tags: list[str] = []
    rate = CORRUPTION_RATES
    given, family = _variant(rng, person.given), _variant(rng, person.family)
    if not first and rng.random() < rate["nickname"] and given in NICKNAMES:
        given = rng.choice(NICKNAMES[given])
        tags.append("nickname")
    adult_woman = person.gender == "female" and (TODAY - person.birth).days > 20 * 365
    if not first and adult_woman and rng.random() < rate["married-name"]:
        family = _variant(rng, rng.choice(FAMILY[person.locale]))
        tags.append("married-name")
    if not first and rng.random() < rate["typo"]:
        if rng.random() < 0.5:
            family = _typo(rng, family)
        else:
            given = _typo(rng, given)
        tags.append("typo")
    if person.locale in ("de", "lt", "vi") and rng.random() < rate["no-diacritics"]:
        given, family = fold(given), fold(family)
        tags.append("no-diacritics")
    birth = person.birth
    transposable = birth.day <= MONTHS and birth.day != birth.month
    if not first and transposable and rng.random() < rate["dm-transposed"]:
        birth = date(birth.year, birth.day, birth.month)
        tags.append("dm-transposed")
    if not first and rng.random() < rate["dob-off"]:
        tens, unit = divmod(birth.day, 10)
        day = tens * 10 + rng.choice([u for u in range(10) if u != unit])
        birth = birth.replace(day=day if 1 <= day <= 28 else max(1, birth.day - 1))
        tags.append("dob-off")
    name: dict[str, Any] = {"use": "official", "family": family, "given": given.split()}
    if person.suffix and rng.random() < 0.75:
        name["suffix"] = [person.suffix]
    if person.locale == "vi":
        order = [family, given] if rng.random() >= rate["name-order"] else [given, family]
        if order[0] != family:
            tags.append("name-order")
        name["text"] = " ".join(order)
    ident = [
        {
            "use": "usual",
            "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
            "system": f"http://{source}.example.org/fhir/mrn",
            "value": rid.upper(),
        }
    ]
    if person.ssn and source != "ehr-c" and rng.random() >= MISSING_RATES["ssn"]:
        ident.append(
            {
                "type": {"coding": [{"system": V2_0203, "code": "SS"}]},
                "system": SSN_SYSTEM,
                "value": person.ssn,
            }
        )
    if person.national_id and rng.random() >= MISSING_RATES["ssn"]:
        system, value = person.national_id
        code = "NI" if system == LT_ID_SYSTEM else "MB"  # v2-0203: national id, member number
        ident.append(
            {
                "type": {"coding": [{"system": V2_0203, "code": code}]},
                "system": system,
                "value": value,
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": LAST_UPDATED},
        "identifier": ident,
        "active": True,
        "name": [name],
    }
    telecom = []
    if rng.random() >= MISSING_RATES["phone"]:
        telecom.append({"system": "phone", "value": person.phone, "use": "home"})
    else:
        tags.append("missing-phone")
    if rng.random() >= MISSING_RATES["email"]:
        telecom.append({"system": "email", "value": person.email})
    if telecom:
        resource["telecom"] = telecom
    if rng.random() >= MISSING_RATES["gender"]:
        resource["gender"] = person.gender
    else:
        tags.append("missing-gender")
    resource["birthDate"] = birth.isoformat()
    if not first and rng.random() < rate["moved"]:
        resource["address"] = [_address(rng, person.locale)]
        tags.append("moved")
    elif rng.random() >= MISSING_RATES["address"]:
        resource["address"] = [dict(person.address)]
    else:
        tags.append("missing-address")
    return resource, tags


def _encounters(
    rng: random.Random, source: str, patient_id: str, count: int
) -> list[dict[str, Any]]:
    out = []
    for n in range(count):
        start = TODAY - timedelta(days=rng.randint(1, 3650), minutes=rng.randint(0, 1440))
        end = start + timedelta(minutes=rng.randint(10, 240))
        cls = rng.choice([("AMB", "ambulatory"), ("EMER", "emergency"), ("IMP", "inpatient")])
        out.append(
            {
                "resourceType": "Encounter",
                "id": f"{patient_id}-e{n}",
                "meta": {"versionId": "1", "lastUpdated": LAST_UPDATED},
                "identifier": [
                    {"system": f"http://{source}.example.org/fhir/visit", "value": f"V{n}"}
                ],
                "status": "finished",
                "class": {"system": ACT_CODE, "code": cls[0], "display": cls[1]},
                "subject": {"reference": f"Patient/{patient_id}"},
                "period": {
                    "start": start.isoformat() + "T08:00:00Z",
                    "end": end.isoformat() + "T09:00:00Z",
                },
            }
        )
    return out


def generate(
    people: int, *, seed: int, sources: int = 3, encounters_per_patient: float = 0
) -> Generated:
    """Invent ``people`` real persons (plus their planted look-alikes) spread over sources.

    The result is deterministic for a given ``seed``. Hard negatives are extra people, so
    the number of distinct persons in the truth is a little larger than ``people``.
    """
    rng = random.Random(seed)
    names = [f"ehr-{SOURCE_LETTERS[i]}" for i in range(sources)]
    counter = iter(range(10**9))

    def next_pid() -> str:
        return f"p{next(counter):06d}"

    persons: list[_Person] = []
    for _ in range(people):
        person = _new_person(rng, next_pid())
        persons.append(person)
        persons.extend(_hard_negatives(rng, person, next_pid))
    patients: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
    encounters: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
    truth: list[TruthRow] = []
    serial = {s: 0 for s in names}
    whole, frac = int(encounters_per_patient), encounters_per_patient % 1
    for person in persons:
        weights = dict(SOURCES_PER_PERSON)
        k = min(sources, rng.choices(list(weights), weights=list(weights.values()))[0])
        chosen = rng.sample(names, k)
        if rng.random() < CORRUPTION_RATES["intra-duplicate"]:
            chosen.append(chosen[0])
        for n, source in enumerate(chosen):
            serial[source] += 1
            rid = f"{source[-1]}-{serial[source]:06d}"
            resource, tags = _record(rng, person, source, rid, first=n == 0)
            patients[source].append(resource)
            truth.append(TruthRow(source, "Patient", rid, person.pid, person.tags + tags))
            count = whole + (1 if rng.random() < frac else 0)
            encounters[source].extend(_encounters(rng, source, rid, count))
    for source in names:  # real exports are not ordered by person
        rng.shuffle(patients[source])
    return Generated(patients, encounters, truth)


def write_truth_csv(rows: Iterable[TruthRow], path: str | Path) -> None:
    """Write the truth file (columns :data:`TRUTH_COLUMNS`)."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRUTH_COLUMNS)
        for row in rows:
            writer.writerow(
                [row.source, row.resource_type, row.resource_id, row.person_id, "|".join(row.tags)]
            )


def read_truth_csv(path: str | Path) -> list[TruthRow]:
    """Read a truth file written by :func:`write_truth_csv` (or by hand, same columns)."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return [
            TruthRow(
                r["source"],
                r.get("resource_type") or "Patient",
                r["resource_id"],
                r["person_id"],
                [t for t in (r.get("tags") or "").split("|") if t],
            )
            for r in csv.DictReader(handle)
        ]


def _write_lines(path: Path, resources: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for resource in resources:
            handle.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")))
            handle.write("\n")


def write_ndjson(generated: Generated, folder: str | Path) -> dict[str, Path]:
    """Write ``<folder>/<source>/{Patient,Encounter}.ndjson`` and ``<folder>/truth.csv``.

    Returns the folder of each source (what an ``ndjson`` source's ``base_url`` points at).
    """
    root = Path(folder)
    out: dict[str, Path] = {}
    for source, resources in generated.patients_by_source.items():
        target = root / source
        target.mkdir(parents=True, exist_ok=True)
        _write_lines(target / "Patient.ndjson", resources)
        _write_lines(target / "Encounter.ndjson", generated.encounters_by_source.get(source, []))
        out[source] = target
    write_truth_csv(generated.truth, root / "truth.csv")
    return out


def truth_as_dicts(generated: Generated) -> list[dict[str, Any]]:
    """The truth rows as plain dicts (for JSON reports)."""
    return [dataclasses.asdict(row) for row in generated.truth]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sources", type=int, default=3)
    parser.add_argument("--encounters-per-patient", type=float, default=0.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    generated = generate(
        args.people,
        seed=args.seed,
        sources=args.sources,
        encounters_per_patient=args.encounters_per_patient,
    )
    write_ndjson(generated, args.out)


if __name__ == "__main__":
    main()
