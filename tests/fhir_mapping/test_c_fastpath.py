"""The validation fast path (``check_resource``) gives exactly the verdict of fhir.resources.

Differential, seeded mutation fuzzing: generated Patients and Encounters (tools.ehrgen),
the FHIR spec examples of tests/fixtures and hand-made seeds (contained resources,
``_field`` extensions with null placeholders, choice types) are mutated (invalid
dates/dateTimes/codes/uris/ids, empty and whitespace strings, wrong JSON types, nulls in
lists and as values, unknown keys, ``_field`` siblings, doubled choice types, missing
required elements, contained resources) and every case is checked against an oracle
that runs the fhir.resources model itself, on cold caches and on warm ones (the shape
already seen valid with other values).
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.patient import Patient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_mapping import InvalidResource, parse_encounter, parse_patient
from fhir_mapping import validate as validation
from fhir_mapping.matchers import Matchers, compile_matcher
from fhir_mapping.shapes import DEFAULT_MAX_SHAPES, Checkers, Plans, Unplannable
from fhir_mapping.validate import check_resource, clear_shape_plans, validate_resource
from tools.ehrgen import generate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "fhir"
MODELS: dict[str, Any] = {"Patient": Patient, "Encounter": Encounter}
SEED = 20261122
#: Mutated cases per seed resource (x3: the structural case and two value variants).
CASES_PER_SEED = 16

EXT = {"url": "http://example.org/x", "valueString": "why not"}
HAND_MADE: list[dict[str, Any]] = [
    {
        "resourceType": "Patient",
        "id": "ext1",
        "name": [
            {"family": "Chalmers", "given": ["Peter", None], "_given": [None, {"extension": [EXT]}]}
        ],
        "_gender": {"extension": [EXT]},
        "birthDate": "1974-12-25",
        "_birthDate": {
            "id": "bd",
            "extension": [
                {"url": "http://example.org/t", "valueDateTime": "1974-12-25T14:35:45-05:00"}
            ],
        },
        "deceasedBoolean": False,
        "multipleBirthInteger": 2,
        "contained": [
            {"resourceType": "Organization", "id": "o1", "name": "Clinic"},
            {
                "resourceType": "Practitioner",
                "id": "pr1",
                "name": [{"family": "Careful", "given": ["Adam"]}],
            },
        ],
        "generalPractitioner": [{"reference": "#pr1"}],
        "managingOrganization": {"reference": "#o1"},
        "communication": [
            {
                "language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "nl"}]},
                "preferred": True,
            }
        ],
        "photo": [{"contentType": "image/gif", "data": "R0lGODlhEwARAPcAAAAAAAAA"}],
    },
    {
        "resourceType": "Encounter",
        "id": "enc-x",
        "status": None,
        "_status": {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                    "valueCode": "unknown",
                }
            ]
        },
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "length": {
            "value": 90,
            "unit": "min",
            "system": "http://unitsofmeasure.org",
            "code": "min",
        },
        "priority": {"coding": [{"code": "R"}]},
        "statusHistory": [{"status": "arrived", "period": {"start": "2020-01-01"}}],
        "hospitalization": {
            "preAdmissionIdentifier": {"value": "x"},
            "dischargeDisposition": {"text": "home"},
        },
        "contained": [
            {
                "resourceType": "Location",
                "id": "loc",
                "name": "Ward 1",
                "position": {"longitude": 4.5, "latitude": 52.1},
            }
        ],
        "location": [{"location": {"reference": "#loc"}, "status": "active"}],
        "meta": {
            "versionId": "3",
            "lastUpdated": "2020-01-01T10:00:00.123+01:00",
            "tag": [{"code": "t"}],
        },
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
    },
]

#: Replacement primitives: mostly strings (the same JSON type keeps the shape, so the
#: warm fast path decides), plus other JSON types, nulls and structures.
STRINGS = [
    "",
    " ",
    "\t",
    "\n",
    "x",
    " lead",
    "trail ",
    "two  spaces",
    "in\tside",
    "finished",
    "unknown",
    "female",
    "official",
    "phone",
    "home",
    "2020",
    "2020-02",
    "2020-02-29",
    "2021-02-29",
    "2020-13-01",
    "2020-00-10",
    "20200101",
    "2020-1-1",
    "2020-01-01T10:00:00Z",
    "2020-01-01T10:00:00",
    "2020-01-01T10:00Z",
    "2020-01-01T25:00:00Z",
    "2020-01-01T10:00:60Z",
    "2016-12-31T23:59:60Z",
    "2020-01-01T10:00:00.123456789+14:00",
    "2020-01-01T10:00:00+25:00",
    "2020-01-01 10:00:00Z",
    "http://example.org/fhir",
    "urn:oid:1.2.3",
    "urn:oid:1.02.3",
    "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
    "has space",
    "Patient/123",
    "Patient/",
    "#home",
    "abc-DEF.123",
    "abc_def",
    "a" * 65,
    "a" * 256,
    "true",
    "1",
    "-1",
    "1.5",
    "\u00e9\u00e8",
    "\x01",
    "<div>x</div>",
    "R0lGODlh",
    "not base64!",
]
OTHERS: list[Any] = [
    None,
    0,
    1,
    -1,
    2**31,
    1.5,
    0.0,
    True,
    False,
    [],
    ["x"],
    [None],
    {},
    {"extension": [EXT]},
]
UNKNOWN_KEYS = ["foo", "_foo", "Status", "resource_type", "fhir_comments", "_id"]
CHOICES = [
    ("deceasedBoolean", True, "deceasedDateTime", "2015-02-14T13:42:00+10:00"),
    ("multipleBirthBoolean", False, "multipleBirthInteger", 3),
    ("valueString", "x", "valueCode", "x"),
]
CONTAINED: list[Any] = [
    {"resourceType": "Organization", "id": "c1", "name": "Contained"},
    {"resourceType": "Practitioner", "id": "c2", "name": [{"family": "Doe"}]},
    {"resourceType": "Location", "id": "c3", "status": "bogus"},
    {"resourceType": "Nonexistent", "id": "c4"},
    {"resourceType": "Patient", "foo": 1},
    {"id": "no-type"},
    None,
]


def load_fixtures() -> list[dict[str, Any]]:
    found = []
    for path in sorted(FIXTURES.glob("*.json")):
        data = json.loads(path.read_text())
        resource = data.get("resource", data)
        if resource.get("resourceType") in MODELS:
            found.append(resource)
    return found


def seed_resources() -> list[dict[str, Any]]:
    generated = generate(40, seed=SEED, encounters_per_patient=1.5)
    patients = [p for items in generated.patients_by_source.values() for p in items][:40]
    encounters = [e for items in generated.encounters_by_source.values() for e in items][:25]
    return [*load_fixtures(), *copy.deepcopy(HAND_MADE), *patients, *encounters]


def oracle(raw: Any, expected_type: str) -> dict[str, Any] | None:
    """The library's verdict, without any plan: None when valid, else the error."""
    try:
        model, resource_type, resource_id = validation._resolve_model(raw, expected_type)
        validation._model_validate(model, raw, resource_type, resource_id)
        validation._extra_checks(raw, resource_type, resource_id)
    except InvalidResource as exc:
        return exc.to_dict()
    return None


def is_planned(raw: dict[str, Any]) -> bool:
    """True when the fast path will judge ``raw`` by its plan (its shape was seen valid)."""
    try:
        shape, _ = validation._shape_key(raw)
    except Unplannable:
        return False
    return isinstance(validation._PLANS.get(shape), tuple)


def fast(raw: Any, expected_type: str) -> dict[str, Any] | None:
    try:
        check_resource(raw, expected_type)
    except InvalidResource as exc:
        return exc.to_dict()
    return None


# -- mutations ---------------------------------------------------------------------------


def containers(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """(container, key or index) of every value below ``node``."""
    if isinstance(node, dict):
        for key in list(node):
            out.append((node, key))
            containers(node[key], out)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out.append((node, i))
            containers(item, out)
    return out


def dicts(node: Any) -> list[dict[str, Any]]:
    found = [node] if isinstance(node, dict) else []
    for container, key in containers(node, []):
        if isinstance(container[key], dict):
            found.append(container[key])
    return found


def primitive_slots(node: Any) -> list[tuple[Any, Any]]:
    return [
        (c, k)
        for c, k in containers(node, [])
        if c[k] is None or isinstance(c[k], str | int | float | bool)
        if k not in ("resourceType",)
    ]


def replace_string(rng: random.Random, raw: Any) -> None:
    """A string value replaced by another string (same JSON type: the shape stays)."""
    slots = [(c, k) for c, k in primitive_slots(raw) if isinstance(c[k], str)]
    if slots:
        container, key = rng.choice(slots)
        container[key] = rng.choice(STRINGS)


def replace_any(rng: random.Random, raw: Any) -> None:
    slots = primitive_slots(raw)
    if slots:
        container, key = rng.choice(slots)
        container[key] = copy.deepcopy(rng.choice(STRINGS + OTHERS))


def drop_key(rng: random.Random, raw: Any) -> None:
    options = [(d, k) for d in dicts(raw) for k in d if not (d is raw and k == "resourceType")]
    if options:
        node, key = rng.choice(options)
        del node[key]


def add_key(rng: random.Random, raw: Any) -> None:
    node = rng.choice(dicts(raw))
    node[rng.choice(UNKNOWN_KEYS)] = copy.deepcopy(rng.choice(STRINGS[:6] + OTHERS))


def add_extension_sibling(rng: random.Random, raw: Any) -> None:
    options = [
        (d, k) for d in dicts(raw) for k in d if not k.startswith("_") and k != "resourceType"
    ]
    if not options:
        return
    node, key = rng.choice(options)
    value = node[key]
    if isinstance(value, list):
        node["_" + key] = [rng.choice([None, {"extension": [EXT]}, {"id": "e"}]) for _ in value]
        if rng.random() < 0.5 and value:
            value[rng.randrange(len(value))] = None
    else:
        node["_" + key] = copy.deepcopy(rng.choice([{"extension": [EXT]}, {}, {"id": "x"}, None]))
        if rng.random() < 0.3:
            node[key] = None


def double_choice(rng: random.Random, raw: Any) -> None:
    first, first_value, second, second_value = rng.choice(CHOICES)
    node = rng.choice(dicts(raw))
    node[first] = first_value
    if rng.random() < 0.7:
        node[second] = second_value


def null_in_list(rng: random.Random, raw: Any) -> None:
    lists = [c[k] for c, k in containers(raw, []) if isinstance(c[k], list) and c[k]]
    if lists:
        target = rng.choice(lists)
        if rng.random() < 0.5:
            target.insert(rng.randrange(len(target) + 1), None)
        else:
            target[rng.randrange(len(target))] = None


def wrap_or_unwrap(rng: random.Random, raw: Any) -> None:
    slots = [(c, k) for c, k in containers(raw, []) if isinstance(c, dict) and k != "resourceType"]
    if slots:
        container, key = rng.choice(slots)
        value = container[key]
        container[key] = value[0] if isinstance(value, list) and value else [value]


def add_contained(rng: random.Random, raw: Any) -> None:
    raw.setdefault("contained", [])
    if isinstance(raw["contained"], list):
        item = copy.deepcopy(rng.choice(CONTAINED))
        if isinstance(item, dict) and rng.random() < 0.5:
            replace_any(rng, item)
        raw["contained"].append(item)


STRUCTURAL = [
    replace_any,
    drop_key,
    add_key,
    add_extension_sibling,
    double_choice,
    null_in_list,
    wrap_or_unwrap,
    add_contained,
]


def structural_case(rng: random.Random, seed: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(seed)
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        rng.choice(STRUCTURAL)(rng, raw)
    return raw


def value_variant(rng: random.Random, raw: dict[str, Any]) -> dict[str, Any]:
    """The same shape with other string values (what a warm plan has to judge)."""
    variant = copy.deepcopy(raw)
    for _ in range(rng.choice([1, 1, 2, 3])):
        replace_string(rng, variant)
    return variant


# -- tests -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def cold_plans() -> Any:
    clear_shape_plans()
    yield
    clear_shape_plans()


def test_fast_path_gives_the_library_verdict_warm_and_cold() -> None:
    rng = random.Random(SEED)
    seeds = seed_resources()
    stats = {"cases": 0, "warm_valid": 0, "warm_invalid": 0, "valid": 0, "invalid": 0}
    cases: list[tuple[dict[str, Any], str]] = []
    for seed in seeds:
        expected_type = seed["resourceType"]
        assert oracle(seed, expected_type) is None, seed.get("id")
        for _ in range(CASES_PER_SEED):
            case = structural_case(rng, seed)
            for raw in (case, value_variant(rng, case), value_variant(rng, case)):
                cases.append((raw, expected_type))
                warm = is_planned(raw)
                expected = oracle(raw, expected_type)
                assert fast(raw, expected_type) == expected, json.dumps(raw)
                # Again: now the shape may be planned, and the verdicts memoized.
                assert fast(raw, expected_type) == expected, json.dumps(raw)
                stats["cases"] += 1
                stats["valid" if expected is None else "invalid"] += 1
                if warm:
                    stats["warm_valid" if expected is None else "warm_invalid"] += 1
    # Cold: every case again with nothing planned, in another order.
    clear_shape_plans()
    rng.shuffle(cases)
    for raw, expected_type in cases:
        assert fast(raw, expected_type) == oracle(raw, expected_type), json.dumps(raw)
    assert stats["cases"] >= 3000, stats
    # The fast path decided thousands of cases itself, both ways.
    assert stats["warm_valid"] >= 300, stats
    assert stats["warm_invalid"] >= 300, stats
    assert stats["valid"] >= 500 and stats["invalid"] >= 500, stats


def test_a_known_shape_with_a_bad_value_reports_the_library_error() -> None:
    encounter = copy.deepcopy(HAND_MADE[1])
    check_resource(encounter, "Encounter")
    bad = copy.deepcopy(encounter)
    bad["period"] = {"start": "2020-13-01"}
    check_resource({**encounter, "period": {"start": "2020-12-01"}}, "Encounter")
    with pytest.raises(InvalidResource) as fast_error:
        check_resource(bad, "Encounter")
    with pytest.raises(InvalidResource) as full_error:
        validate_resource(bad, "Encounter")
    assert fast_error.value.to_dict() == full_error.value.to_dict()
    assert {i.path for i in fast_error.value.issues} == {"Encounter.period.start"}


def test_extra_checks_run_on_the_fast_path() -> None:
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "active": True}
    check_resource(patient, "Patient")
    with pytest.raises(InvalidResource) as caught:
        check_resource({**patient, "gender": "f"}, "Patient")  # a valid code, not in the binding
    assert {i.path for i in caught.value.issues} == {"Patient.gender"}


#: A Patient and an Encounter with a code at every path of the required bindings the
#: extra checks hold (validate._check_patient, validate._check_encounter).
BOUND_PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "bound",
    "gender": "female",
    "name": [{"use": "official", "family": "Doe"}],
    "telecom": [{"system": "phone", "value": "555", "use": "home"}],
    "address": [{"use": "home", "type": "both", "city": "X"}],
    "identifier": [{"use": "usual", "value": "1"}],
    "contact": [
        {
            "gender": "male",
            "name": {"use": "usual", "family": "Roe"},
            "address": {"use": "work", "type": "postal", "city": "Y"},
            "telecom": [{"system": "email", "value": "a@b.c", "use": "work"}],
        }
    ],
    "link": [{"other": {"reference": "Patient/x"}, "type": "seealso"}],
}
BOUND_ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "bound",
    "status": "finished",
    "class": {"code": "AMB"},
    "statusHistory": [{"status": "arrived", "period": {"start": "2020-01-01"}}],
}
BOUND_PATHS: list[tuple[dict[str, Any], tuple[Any, ...], str]] = [
    (BOUND_PATIENT, ("gender",), "Patient.gender"),
    (BOUND_PATIENT, ("name", 0, "use"), "Patient.name[0].use"),
    (BOUND_PATIENT, ("telecom", 0, "system"), "Patient.telecom[0].system"),
    (BOUND_PATIENT, ("telecom", 0, "use"), "Patient.telecom[0].use"),
    (BOUND_PATIENT, ("address", 0, "use"), "Patient.address[0].use"),
    (BOUND_PATIENT, ("address", 0, "type"), "Patient.address[0].type"),
    (BOUND_PATIENT, ("identifier", 0, "use"), "Patient.identifier[0].use"),
    (BOUND_PATIENT, ("contact", 0, "gender"), "Patient.contact[0].gender"),
    (BOUND_PATIENT, ("contact", 0, "name", "use"), "Patient.contact[0].name.use"),
    (BOUND_PATIENT, ("contact", 0, "address", "use"), "Patient.contact[0].address.use"),
    (BOUND_PATIENT, ("contact", 0, "address", "type"), "Patient.contact[0].address.type"),
    (BOUND_PATIENT, ("contact", 0, "telecom", 0, "system"), "Patient.contact[0].telecom[0].system"),
    (BOUND_PATIENT, ("contact", 0, "telecom", 0, "use"), "Patient.contact[0].telecom[0].use"),
    (BOUND_PATIENT, ("link", 0, "type"), "Patient.link[0].type"),
    (BOUND_ENCOUNTER, ("status",), "Encounter.status"),
    (BOUND_ENCOUNTER, ("statusHistory", 0, "status"), "Encounter.statusHistory[0].status"),
]


@pytest.mark.parametrize(
    ("seed", "path", "fhir_path"), BOUND_PATHS, ids=[p[2] for p in BOUND_PATHS]
)
def test_a_known_shape_with_a_code_outside_its_binding_is_refused(
    seed: dict[str, Any], path: tuple[Any, ...], fhir_path: str
) -> None:
    """The plans hold the required bindings (the extra checks do not run on the fast
    path): a code the models accept but the binding does not, at a planned position."""
    expected_type = seed["resourceType"]
    assert oracle(seed, expected_type) is None
    check_resource(seed, expected_type)
    bad = copy.deepcopy(seed)
    node: Any = bad
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = "nope"  # a valid code, in no binding
    assert is_planned(bad)
    expected = oracle(bad, expected_type)
    assert expected is not None
    assert [issue["path"] for issue in expected["issues"]] == [fhir_path]
    assert fast(bad, expected_type) == expected
    assert fast(bad, expected_type) == expected  # the failed verdict memoized


def test_a_shape_that_fails_the_json_type_checks_gets_no_plan() -> None:
    """The models coerce ``"true"`` to True; the extra checks refuse it, every time."""
    raw = {"resourceType": "Patient", "id": "p1", "active": "true"}
    for _ in range(2):
        with pytest.raises(InvalidResource) as caught:
            check_resource(raw, "Patient")
        assert {i.path for i in caught.value.issues} == {"Patient.active"}
        assert not is_planned(raw)
    with pytest.raises(InvalidResource):
        validate_resource(raw, "Patient")
    assert not is_planned(raw)


def test_a_matcher_recognises_exactly_its_shape() -> None:
    """A compiled matcher takes a resource iff the resource has its template's shape
    key, and gives the leaves shape_of gives (the plan's positions, in order)."""
    rng = random.Random(SEED + 1)
    seeds = seed_resources()
    cases: list[dict[str, Any]] = []
    for seed in seeds:
        for _ in range(6):
            case = structural_case(rng, seed)
            cases += [case, value_variant(rng, case)]
    cases += [
        {"resourceType": "Patient", "active": True},
        {"resourceType": "Patient", "active": 1},
        {"resourceType": "Patient", "active": 1.0},
        {"active": True, "resourceType": "Patient"},
        {"resourceType": "Patient", "contained": [{"resourceType": "Organization"}]},
        {"resourceType": "Patient", "contained": [{"resourceType": "Practitioner"}]},
        {"resourceType": "Patient", "contained": [{"resourceType": None}]},
        {"resourceType": "Patient", "name": [{"given": ["A", None]}]},
        {"resourceType": "Patient", "name": [{"given": [None, "A"]}]},
        {"resourceType": "Patient", "name": [{"given": ["A"]}, None]},
    ]
    keyed: list[tuple[dict[str, Any], tuple[Any, ...], list[Any]]] = []
    for case in cases:
        try:
            shape, leaves = validation._shape_key(case)
        except Unplannable:
            continue
        keyed.append((case, shape, leaves))
    matched = unmatched = 0
    for template, template_shape, _ in keyed[:: max(1, len(keyed) // 150)] + keyed[-10:]:
        matcher = compile_matcher(template)
        assert matcher is not None
        for case, shape, leaves in keyed:
            found = matcher(case)
            if shape == template_shape:
                assert found == tuple(leaves), json.dumps(case)
                matched += 1
            else:
                assert found is None, json.dumps(case)
                unmatched += 1
    assert matched >= 300 and unmatched >= 10_000, (matched, unmatched)


def test_the_shortcuts_accept_only_what_the_validators_accept() -> None:
    """Full dates and dateTimes, plain ids and strings with a visible character are
    accepted without the field's validator: never one it refuses (leap days, month 13,
    day 0, year 0000, hour 24, zones past 14:00, white space only, lone surrogates...)."""
    from fhir.resources.R4B.meta import Meta
    from fhir.resources.R4B.period import Period
    from fhir.resources.R4B.reference import Reference

    days = [
        f"{year:04d}-{month:02d}-{day:02d}"
        for year in (0, 1, 100, 1900, 2000, 2021, 2024, 9999)
        for month in range(14)
        for day in range(33)
    ]
    times = ["T00:00:00Z", "T23:59:59+14:00", "T10:00:00-13:59", "T24:00:00Z", "T10:60:00Z"]
    times += ["T10:00:00", "T10:00Z", "T10:00:00.5Z", "T10:00:00+14:01", "T10:00:60Z"]
    texts = ["", " ", "\x0b", "\x1c", "\u200b", "\u3000", "\xa0x", "\ud800", "a\udfff", "é"]
    texts += ["a_b", "a b", "-", ".", "x" * 64, "x" * 65, "Patient/1", "ñ-1", "a\x00", "\n"]
    values = days + [day + time for day in days[::5] for time in times] + STRINGS + texts
    checkers = Checkers()
    for model, name, least in (
        (Patient, "birthDate", 2000),
        (Period, "start", 2000),
        (Encounter, "id", 2000),
        (Reference, "reference", 2000),
    ):
        checker = checkers.checker(model, name, str)
        shortcut = checkers.shortcuts[checker]
        assert shortcut is not None, name
        accepted = 0
        for value in values:
            if shortcut(value):
                accepted += 1
                assert checkers.validators[checker](value) is not None, (name, value)
        assert accepted >= least, (name, accepted)
    # An instant needs its time; a code has a pattern of its own.
    assert checkers.shortcuts[checkers.checker(Meta, "lastUpdated", str)] is None
    assert checkers.shortcuts[checkers.checker(Patient, "gender", str)] is None


def test_a_top_level_key_tuple_with_two_shapes_loses_its_matcher() -> None:
    """Only a key tuple with one planned shape keeps a matcher (one with several is left
    to the walk, then to fhir_mapping.matchers.ShapeTrees); the verdicts stay."""
    one = {"resourceType": "Patient", "id": "m1", "telecom": [{"value": "1"}]}
    two = {"resourceType": "Patient", "id": "m2", "telecom": [{"value": "1"}, {"value": "2"}]}
    check_resource(one, "Patient")
    assert validation._MATCHERS.find({**one, "id": "m3"}) is not None
    check_resource(two, "Patient")
    assert validation._MATCHERS.find({**one, "id": "m3"}) is None
    for raw in (one, two, {**one, "telecom": [{"value": " "}]}):
        assert fast(raw, "Patient") == oracle(raw, "Patient")


def test_matchers_stay_bounded_and_come_back() -> None:
    one = {"resourceType": "Patient", "id": "m1", "telecom": [{"value": "1"}]}
    two = {"resourceType": "Patient", "id": "m2", "telecom": [{"value": "1"}, {"value": "2"}]}
    other = {"resourceType": "Encounter", "id": "e1", "status": "finished"}
    matchers = Matchers(max_keys=1)
    matchers.add(one, (1,))
    assert matchers.find({**one, "id": "m3"}) == ((1,), ("m3", "1"))
    matchers.add(other, (2,))  # full: the Patient keys are dropped
    assert len(matchers) == 1
    assert matchers.find(one) is None
    assert matchers.find(other) == ((2,), ("e1", "finished"))
    matchers.add(one, (1,))  # found by its shape key later: compiled again
    assert matchers.find(one) == ((1,), ("m1", "1"))
    matchers.add(two, (3,))  # another shape under the same keys: they are walked
    assert matchers.find(one) is None
    assert matchers.find(two) is None


def test_parsers_keep_working_through_the_fast_path() -> None:
    for seed in seed_resources():
        if seed["resourceType"] == "Patient":
            assert parse_patient(seed).resource_id == seed["id"]
            assert parse_patient(seed).resource_id == seed["id"]  # warm
        else:
            assert parse_encounter(seed).resource_id == seed["id"]
            assert parse_encounter(seed).resource_id == seed["id"]
    assert isinstance(validate_resource(HAND_MADE[0], "Patient"), Patient)


def test_null_placeholders_of_primitive_arrays_are_no_values() -> None:
    """``given: ["Peter", null]`` with a ``_given`` extension is valid FHIR: the null only
    lines the extension up with its position, so the record, its golden rendering and its
    search tokens carry "Peter" alone."""
    from fhir_mapping import golden_record_from_patient, render_golden_patient, search_tokens

    raw = {
        "resourceType": "Patient",
        "id": "nulls",
        "name": [
            {
                "family": "Chalmers",
                "given": ["Peter", None],
                "_given": [None, {"extension": [EXT]}],
                "prefix": [None],
                "_prefix": [{"extension": [EXT]}],
            }
        ],
        "address": [{"line": [None, "1 Main St"], "_line": [{"extension": [EXT]}, None]}],
    }
    record = parse_patient(raw)
    assert record.names[0].given == ["Peter"]
    assert record.names[0].prefix == []
    assert record.addresses[0].line == ["1 Main St"]
    assert [t for t in search_tokens(raw) if t[0] == "given"] == [("given", None, "peter")]
    golden = render_golden_patient(golden_record_from_patient(record, "g-nulls"))
    assert golden["name"][0]["given"] == ["Peter"]
    validate_resource(golden, "Patient")


def test_caches_stay_bounded() -> None:
    plans = Plans(max_shapes=3)
    for i in range(10):
        plans.put((f"k{i}",), (i,))
    assert len(plans) == 3
    assert plans.get(("k0",)) is False
    assert plans.get(("k9",)) == (9,)
    checkers = Checkers(max_verdicts=6)
    checker = checkers.checker(Patient, "birthDate", str)
    for day in range(1, 20):
        assert checkers.accept((checker,), [f"2020-01-{day:02d}"])
        assert checkers.accept((checker,), ["1999-12-31"])  # a value that repeats stays
        assert len(checkers) <= 6
    assert (checker, "1999-12-31") in checkers.verdicts
    assert (checker, "2020-01-01") not in checkers.verdicts
    assert (checker, "2020-01-01") not in checkers.old_verdicts
    assert not checkers.accept((checker,), ["2020-01-32"])
    assert not checkers.accept((checker,), ["2020-01-32"])  # memoized failures stay failures


def test_many_shapes_keep_the_plan_cache_bounded() -> None:
    for i in range(DEFAULT_MAX_SHAPES + 50):
        # Each extra unknown-free key combination is a new shape: telecom lists of i entries.
        raw = {"resourceType": "Patient", "id": "p", "telecom": [{"value": "1"}] * (i % 60 + 1)}
        raw["name"] = [{"given": ["A"] * (i // 60 + 1)}]
        check_resource(raw, "Patient")
    assert len(validation._PLANS) <= DEFAULT_MAX_SHAPES


#: Characters dates, codes, ids and uris are made of, plus white space and a few others.
FHIRISH = "0123456789-:T.Z+ /#_abcXYZ\t\u00e9"
leaf_values = st.one_of(
    st.text(FHIRISH, max_size=30),
    st.sampled_from(STRINGS),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)
TEMPLATES = [*load_fixtures(), *HAND_MADE]


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.integers(min_value=0, max_value=len(TEMPLATES) - 1),
    st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), leaf_values), max_size=4),
)
def test_hypothesis_leaf_values_get_the_library_verdict(
    template: int, replacements: list[tuple[int, Any]]
) -> None:
    """Any values at the primitive positions of known-valid shapes: warm plans decide
    the same-typed ones, the rest go cold; either way the verdict is the library's."""
    seed = TEMPLATES[template]
    expected_type = seed["resourceType"]
    check_resource(seed, expected_type)  # the template's shape is planned
    raw = copy.deepcopy(seed)
    for position, value in replacements:
        slots = primitive_slots(raw)
        if slots:
            container, key = slots[position % len(slots)]
            container[key] = value
    assert fast(raw, expected_type) == oracle(raw, expected_type), json.dumps(raw)
    assert fast(raw, expected_type) == oracle(raw, expected_type), json.dumps(raw)
