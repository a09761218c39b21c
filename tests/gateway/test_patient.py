"""Patient read, vread, history and search, as a FHIR consumer sees them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fhir_mapping import search_tokens
from store.golden import GoldenPatientRepository
from store.models import Audit
from tests.gateway.conftest import MRN, patient_resource, set_recorded

Headers = dict[str, str]


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def _next(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


def _search(client: TestClient, headers: Headers, query: str) -> dict[str, Any]:
    reply = client.get(f"/fhir/Patient?{query}", headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_read_vread_and_history(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    session_factory: sessionmaker[Session],
) -> None:
    golden_id = add_patient(family="Okafor")
    with session_factory() as session:
        repo = GoldenPatientRepository(session)
        resource = patient_resource(family="Okafor-Bello")
        repo.save(repo.read(golden_id), resource, search_tokens(resource))
        session.commit()
    read = client.get(f"/fhir/Patient/{golden_id}", headers=headers)
    assert read.status_code == 200
    assert read.headers["etag"] == 'W/"2"'
    assert read.headers["content-type"].startswith("application/fhir+json")
    assert read.json()["meta"]["versionId"] == "2"
    assert read.json()["name"][0]["family"] == "Okafor-Bello"
    old = client.get(f"/fhir/Patient/{golden_id}/_history/1", headers=headers)
    assert old.status_code == 200 and old.json()["name"][0]["family"] == "Okafor"
    assert old.headers["etag"] == 'W/"1"'
    assert client.get(f"/fhir/Patient/{golden_id}/_history/9", headers=headers).status_code == 404
    assert client.get(f"/fhir/Patient/{golden_id}/_history/x", headers=headers).status_code == 400
    history = client.get(f"/fhir/Patient/{golden_id}/_history?_count=1", headers=headers).json()
    assert history["type"] == "history"
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"']
    second = client.get(_next(history) or "", headers=headers).json()
    assert [e["response"]["etag"] for e in second["entry"]] == ['W/"1"']
    assert _next(second) is None


def test_history_since_keeps_the_versions_recorded_from_that_instant(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    session_factory: sessionmaker[Session],
) -> None:
    golden_id = add_patient(family="Since")
    with session_factory() as session:
        repo = GoldenPatientRepository(session)
        for family in ("Since-Two", "Since-Three"):
            resource = patient_resource(family=family)
            repo.save(repo.read(golden_id), resource, search_tokens(resource))
        session.commit()
    set_recorded(
        session_factory,
        {(golden_id, 1): "2024-01-01T00:00:00", (golden_id, 2): "2025-06-01T12:00:00"},
    )

    def versions(query: str) -> list[str]:
        reply = client.get(f"/fhir/Patient/{golden_id}/_history?{query}", headers=headers)
        assert reply.status_code == 200, reply.text
        pages, bundle = [], reply.json()
        while True:
            pages.extend(e["response"]["etag"] for e in bundle.get("entry", []))
            url = _next(bundle)
            if url is None:
                return pages
            assert "_since=" in url or "_since" not in query
            bundle = client.get(url, headers=headers).json()

    assert versions("") == ['W/"3"', 'W/"2"', 'W/"1"']
    assert versions("_since=2025-06-01T12:00:00Z&_count=1") == ['W/"3"', 'W/"2"']
    assert versions("_since=2025-06-01T13:00:00%2B01:00") == ['W/"3"', 'W/"2"']
    assert versions("_since=2025-06-01T12:00:01Z") == ['W/"3"']
    assert versions("_since=2024") == ['W/"3"', 'W/"2"', 'W/"1"']
    assert versions("_since=2999-01-01") == []
    for bad in ("2025-13-01", "ge2025-01-01", "yesterday"):
        reply = client.get(f"/fhir/Patient/{golden_id}/_history?_since={bad}", headers=headers)
        assert reply.status_code == 400 and reply.json()["issue"][0]["expression"] == ["_since"]


def test_conditional_read_honours_if_none_match_and_if_match(
    client: TestClient, headers: Headers, add_patient: Callable[..., str]
) -> None:
    url = f"/fhir/Patient/{add_patient()}"
    cached = client.get(url, headers={**headers, "If-None-Match": 'W/"1"'})
    assert cached.status_code == 304 and cached.headers["etag"] == 'W/"1"'
    assert client.get(url, headers={**headers, "If-None-Match": 'W/"0"'}).status_code == 200
    assert client.get(url, headers={**headers, "If-Match": 'W/"1"'}).status_code == 200
    stale = client.get(url, headers={**headers, "If-Match": 'W/"7"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"


def test_unknown_deleted_and_merged_records(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    session_factory: sessionmaker[Session],
) -> None:
    survivor, loser, deleted = add_patient(), add_patient(), add_patient()
    with session_factory() as session:
        repo = GoldenPatientRepository(session)
        for golden_id, status, into in ((loser, "merged", survivor), (deleted, "deleted", None)):
            golden = repo.read(golden_id)
            repo.save(golden, golden.resource, [], status=status, merged_into=into)
        session.commit()
    missing = client.get("/fhir/Patient/no-such-id", headers=headers)
    assert missing.status_code == 404 and missing.json()["issue"][0]["code"] == "not-found"
    gone = client.get(f"/fhir/Patient/{deleted}", headers=headers)
    assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
    merged = client.get(f"/fhir/Patient/{loser}", headers=headers)
    assert merged.status_code == 200
    body = merged.json()
    assert body["id"] == loser and body["active"] is False
    assert body["link"][0] == {"other": {"reference": f"Patient/{survivor}"}, "type": "replaced-by"}
    # Searches find the person once: through the survivor, not the merged id.
    found = _search(client, headers, "_id=" + ",".join([survivor, loser, deleted]))
    assert _ids(found) == [survivor]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"identifier={MRN}|MRN-A", ["a"]),
        ("identifier=MRN-B", ["b"]),
        (f"identifier={MRN}|", ["a", "b", "c", "d"]),
        ("identifier=urn:other|MRN-A", []),
        ("family=müller", ["a"]),
        ("family=MUL", ["a"]),
        ("name=jose", ["b"]),
        ("given=JOSÉ", ["b"]),
        ("name=garcia,muller", ["a", "b"]),
        ("family=garcia&given=maria", []),
        ("gender=male", ["b"]),
        ("birthdate=1980", ["a"]),
        ("birthdate=1980-03", ["a"]),
        ("birthdate=1980-03-14", ["a"]),
        ("birthdate=lt1980-03-14", ["c", "d"]),
        ("birthdate=le1980-03-14", ["a", "c", "d"]),
        ("birthdate=gt1980-03-14", ["b"]),
        ("birthdate=ge1990", ["b"]),
        ("birthdate=ne1980-03-14", ["b", "c", "d"]),
        ("birthdate=ge1970&birthdate=lt1985", ["a", "c"]),
        ("birthdate=1961", ["d"]),
        ("birthdate=1961-06", []),
        ("birthdate=ge1961-06", ["a", "b", "c", "d"]),
        ("birthdate=lt1961-06", ["d"]),
        ("birthdate=sa1961-06&birthdate=lt1976", ["c"]),
        ("phone=(415) 555-0199", ["b"]),
        ("email=ANNA@EXAMPLE.ORG", ["a"]),
        ("address-postalcode=941", ["a", "b"]),
        ("address-postalcode=10001", ["c"]),
    ],
)
def test_search_parameters(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    query: str,
    expected: list[str],
) -> None:
    ids = {
        "a": add_patient(
            family="Müller",
            given="Anna",
            birth_date="1980-03-14",
            mrn="MRN-A",
            email="anna@example.org",
            postal="94110",
        ),
        "b": add_patient(
            family="García",
            given="José",
            birth_date="1992-07-01",
            gender="male",
            mrn="MRN-B",
            phone="+1 (415) 555-0199",
            postal="94103",
        ),
        "c": add_patient(
            family="Smith", given="Ann", birth_date="1975-12-31", mrn="MRN-C", postal="10001"
        ),
        # Only the year is known: it matches year-level searches, not a month inside it.
        "d": add_patient(
            family="Yearonly", given="Uli", birth_date="1961", mrn="MRN-D", phone=None, postal=None
        ),
    }
    found = _search(client, headers, query + "&_count=50")
    assert sorted(_ids(found)) == sorted(ids[k] for k in expected)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("address-city=sao", ["br"]),
        ("address-city=SÃO PAULO", ["br"]),
        ("address-city=san", ["us", "at"]),
        ("address-city=sankt", ["at"]),
        ("address-state=ca", ["us"]),
        ("address-state=nieder", ["at"]),
        ("address-country=us", ["us"]),
        ("address-country=brazil,at", ["br", "at"]),
        ("address-city=san&address-country=at", ["at"]),
        ("telecom=phone|(415) 555-0199", ["us"]),
        ("telecom=email|JOAO@example.com", ["br"]),
        ("telecom=joao@example.com", ["br"]),
        ("telecom=415.555.0199", ["us"]),
        ("telecom=phone|", ["br", "us"]),
        ("telecom=email|", ["br"]),
        ("telecom=email|4155550199", []),
        ("telecom=phone|4155550199,email|joao@example.com", ["br", "us"]),
        ("telecom:missing=true", ["at"]),
        ("telecom:missing=false", ["br", "us", "fax"]),  # a fax number is a telecom too
    ],
)
def test_address_part_and_telecom_search(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    query: str,
    expected: list[str],
) -> None:
    def person(city: str, state: str, country: str, telecom: list[dict[str, str]]) -> str:
        resource = patient_resource(phone=None, postal=None)
        resource["address"] = [{"city": city, "state": state, "country": country}]
        if telecom:
            resource["telecom"] = telecom
        return add_patient(resource)

    ids = {
        "br": person(
            "São Paulo",
            "SP",
            "Brazil",
            [
                {"system": "phone", "value": "+55 11 5555 0101"},
                {"system": "email", "value": "Joao@Example.com"},
            ],
        ),
        "us": person("San Francisco", "CA", "US", [{"system": "phone", "value": "+14155550199"}]),
        "at": person("Sankt Pölten", "Niederösterreich", "AT", []),
        "fax": person("Lyon", "ARA", "FR", [{"system": "fax", "value": "+33 4 55 55 01 00"}]),
    }
    found = _search(client, headers, query + "&_count=50")
    assert sorted(_ids(found)) == sorted(ids[k] for k in expected)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("address=flat", ["uk"]),
        ("address=10 downing", ["uk"]),
        ("address=downing", []),
        ("address:contains=downing", ["uk"]),
        ("address=westminster", ["uk"]),
        ("address=LONDON", ["uk"]),
        ("address=gb", ["uk"]),
        ("address=sw1a", ["uk"]),
        ("address=sw1a 2aa", ["uk"]),
        ("address=san", ["us"]),
        ("address=ca", ["us"]),
        ("address=94105", ["us"]),
        ("address=hauptstrasse", ["de"]),
        ("address=berlin", []),
        ("address:contains=berlin", ["de"]),
        ("address=london,94105", ["uk", "us"]),
        ("address:missing=true", ["none", "nl"]),
        ("address:missing=false", ["uk", "us", "de"]),
        ("family:exact=O'Brien", ["uk"]),
        ("family:exact=o'brien", []),
        ("family:exact=Obrien", ["us"]),
        ("family:exact=O'Brien,Müller", ["uk", "de"]),
        ("given:exact=Siobhán", ["uk"]),
        ("given:exact=Siobhan", ["us"]),
        ("given:exact=Mary Ann", ["uk"]),
        ("given:exact=Mary", []),
        ("name:exact=Siobhán O'Brien", ["uk"]),
        ("name:exact=Obrien", ["us"]),
        ("name:exact=Mary Ann", ["uk"]),
        ("name:exact=Müller", ["de"]),
        ("name:exact=Muller", []),
        ("name:exact=O'Brien&address-city=london", ["uk"]),
        ("address-city:exact=London", ["uk"]),
        ("address-city:exact=london", []),
        ("address-state:exact=CA", ["us"]),
        ("address-country:exact=US", ["us"]),
        ("address-postalcode:exact=SW1A 2AA", ["uk"]),
        ("address-postalcode:exact=SW1A2AA", []),
        ("address:exact=Flat 2", ["uk"]),
        ("address:exact=10 Downing St.", ["uk"]),
        ("address:exact=10 Downing St", []),
        ("address:exact=Westminster", ["uk"]),
        ("address:exact=San Francisco", ["us"]),
        ("address:exact=94105", ["us"]),
        ("address:exact=Hauptstraße 5\\, 10115 Berlin", ["de"]),  # an escaped comma
        # Several words: the whole starts a name, or each word starts one of them.
        ("name=siobhan obrien", ["uk", "us"]),
        ("name=obrien siobhan", ["uk", "us"]),
        ("name=SIO O'BR", ["uk", "us"]),
        ("name=mary ann", ["uk"]),
        ("name=mary siobhan", ["uk"]),
        ("name=anna obrien", []),
        ("name=anna müller", ["de"]),
        ("name=anna muller nowhere", []),
        ("name:contains=obh rie", ["uk", "us"]),
        ("given=mary ann", ["uk"]),
        ("given=siobhan mary", ["uk"]),
        ("given=siobhan obrien", []),
        ("family=obrien siobhan", []),
        ("family=van der", ["nl"]),
        ("family=der van", []),
        ("name=der van", ["nl"]),
        ("name=o ob obr obri obrie siobhan", ["uk", "us"]),
        ("name=o ob obr obri obrie obrien siobhan", []),  # beyond 6 words: the whole only
    ],
)
def test_address_and_exact_string_search(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    query: str,
    expected: list[str],
) -> None:
    """``address`` matches any part of any address, starting with the value; ``:exact``
    matches a whole string, case and accents as given
    (https://hl7.org/fhir/R4/search.html#string)."""

    def person(name: dict[str, Any], address: dict[str, Any] | None) -> str:
        resource: dict[str, Any] = {"resourceType": "Patient", "name": [name]}
        if address is not None:
            resource["address"] = [address]
        return add_patient(resource)

    ids = {
        "uk": person(
            {"family": "O'Brien", "given": ["Siobhán", "Mary Ann"], "text": "Siobhán O'Brien"},
            {
                "line": ["10 Downing St.", "Flat 2"],
                "city": "London",
                "district": "Westminster",
                "postalCode": "SW1A 2AA",
                "country": "GB",
            },
        ),
        "us": person(
            {"family": "Obrien", "given": ["Siobhan"]},
            {
                "line": ["1 Market St"],
                "city": "San Francisco",
                "state": "CA",
                "postalCode": "94105",
                "country": "US",
            },
        ),
        "de": person(
            {"family": "Müller", "given": ["Anna"]},
            {"use": "home", "text": "Hauptstraße 5, 10115 Berlin"},
        ),
        "none": person({"family": "Nowhere"}, None),
        "nl": person({"family": "van der Berg", "given": ["Els"]}, None),
    }
    found = _search(client, headers, query + "&_count=50")
    assert sorted(_ids(found)) == sorted(ids[k] for k in expected)


V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"{V2_0203}|MR|A-1", ["mr", "local"]),
        ("urn:codes|10|A-1", ["local"]),
        (f"{V2_0203}|SS|A-1", ["ss"]),
        (f"{V2_0203}|MR|A-2", []),
        (f"{V2_0203}|MR|A-1,{V2_0203}|SS|A-1", ["mr", "local", "ss"]),
        (f"{V2_0203}|SS|A-9", ["split"]),
        (f"{V2_0203}|MR|A-9", []),  # the type must be that identifier's, not another's
        (f"{V2_0203}|mr|A-1", []),
        (f"{V2_0203}|MR|a-1", []),
    ],
)
def test_identifier_of_type(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    query: str,
    expected: list[str],
) -> None:
    """``identifier:of-type=system|code|value`` (https://hl7.org/fhir/R4/search.html#token):
    a medical record number whatever system each EHR files it under."""

    def person(*identifiers: tuple[str, str, list[dict[str, str]]]) -> str:
        resource = {
            "resourceType": "Patient",
            "identifier": [
                {"system": system, "value": value, "type": {"coding": codings}}
                for system, value, codings in identifiers
            ],
        }
        return add_patient(resource)

    mr = {"system": V2_0203, "code": "MR"}
    ss = {"system": V2_0203, "code": "SS"}
    ids = {
        "mr": person(("urn:ehr-a", "A-1", [mr])),
        "local": person(("urn:ehr-b", "A-1", [{"system": "urn:codes", "code": "10"}, mr])),
        "ss": person(("urn:ehr-c", "A-1", [ss])),
        "split": person(("urn:ehr-a", "A-9", [ss]), ("urn:ehr-a", "B-1", [mr])),
    }
    found = _search(client, headers, f"identifier:of-type={query}&_count=50")
    assert sorted(_ids(found)) == sorted(ids[k] for k in expected)


def test_telecom_of_a_system_not_indexed_is_a_bad_request(
    client: TestClient, headers: Headers
) -> None:
    """Fax, pager, URL and SMS values are not indexed: a search for one is refused, not
    answered with nothing (which would say that no one has that number)."""
    for value in ("fax|4155550100", "sms|4155550100", "|4155550100", "phone|---"):
        reply = client.get("/fhir/Patient", params={"telecom": value}, headers=headers)
        assert reply.status_code == 400, value
        assert reply.json()["issue"][0]["expression"] == ["telecom"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("email:missing=true", ["bare", "male"]),
        ("email:missing=false", ["full"]),
        ("birthdate:missing=true", ["bare"]),
        ("birthdate:missing=false", ["full", "male"]),
        ("gender:missing=true", ["bare"]),
        ("address-city:missing=true", ["bare"]),
        ("name:missing=false", ["full", "bare", "male"]),
        ("identifier:missing=true", []),
        ("gender:not=male", ["full", "bare"]),
        ("gender:not=male,female", ["bare"]),
        ("phone:not=415-555-0101", ["bare", "male"]),
        (f"identifier:not={MRN}|MRN-A", ["bare", "male"]),
        (f"identifier:not={MRN}|", []),
        ("telecom:not=email|anna@example.org", ["bare", "male"]),
        ("telecom:not=phone|", ["bare"]),
        ("family:contains=KWO", ["bare"]),
        ("family:contains=kwo,arc", ["bare", "male"]),
        ("name:contains=ull", ["full"]),
        ("given:contains=os", ["male"]),
        ("family:contains=adeyemi", ["bare"]),
        ("address-postalcode:contains=110", ["full"]),
        ("family=kwo", []),
        ("email:missing=true&gender:not=male", ["bare"]),
    ],
)
def test_search_modifiers(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    query: str,
    expected: list[str],
) -> None:
    """``:missing``, ``:not`` and ``:contains`` (https://hl7.org/fhir/R4/search.html#modifiers):
    a CRM asks who has no email on file, or everyone but one identifier."""
    bare = {
        "resourceType": "Patient",
        "name": [{"family": "Okonkwo-Adeyemi", "given": ["Chidi"]}],
        "identifier": [{"system": MRN, "value": "MRN-BARE"}],
    }
    ids = {
        "full": add_patient(
            family="Müller",
            given="Anna",
            mrn="MRN-A",
            phone="+1 415 555 0101",
            email="anna@example.org",
            postal="94110",
        ),
        "bare": add_patient(bare),
        "male": add_patient(
            family="García",
            given="José",
            birth_date="1992-07-01",
            gender="male",
            mrn="MRN-M",
            phone="+1 (415) 555-0199",
            postal="94103",
        ),
    }
    found = _search(client, headers, query + "&_count=50")
    assert sorted(_ids(found)) == sorted(ids[k] for k in expected)
    # The modifier is kept in the self link, so the next page asks the same question.
    assert query.split("=")[0] in unquote(found["link"][0]["url"])


@pytest.mark.parametrize(
    "query",
    [
        "gender:exact=male",
        "identifier:exact=MRN-A",
        "name:exact=---",
        "email:missing=maybe",
        "email:missing=",
        "telecom:missing=maybe",
        "_id:not=abc",
        "birthdate:not=1980",
        "gender:contains=ma",
        "gender:not=robot",
        "identifier:text=MRN",
        "identifier:of-type=MR|A-1",
        f"identifier:of-type={V2_0203}||A-1",
        "identifier:of-type=",
        "phone:of-type=a|b|c",
        "given:contains=%20",
    ],
)
def test_unsupported_or_invalid_modifiers_are_400(
    client: TestClient, headers: Headers, query: str
) -> None:
    """A modifier askonce can't apply is refused, in lenient handling too: ignoring it
    would widen the answer."""
    reply = client.get(f"/fhir/Patient?{query}", headers=headers)
    assert reply.status_code == 400, query
    outcome = reply.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"][0].startswith(query.split(":")[0])


def test_paging_visits_every_record_once(
    client: TestClient, headers: Headers, add_patient: Callable[..., str]
) -> None:
    created = {add_patient(family="Pager", mrn=f"P{i}") for i in range(12)}
    for sort in ("", "&_sort=-_lastUpdated", "&_sort=birthdate"):
        seen: list[str] = []
        bundle = _search(client, headers, "family=pager&_count=5" + sort)
        pages = 1
        while True:
            seen.extend(_ids(bundle))
            url = _next(bundle)
            if url is None:
                break
            reply = client.get(url, headers=headers)
            assert reply.status_code == 200
            bundle = reply.json()
            pages += 1
        assert pages == 3
        assert len(seen) == 12 and set(seen) == created


def test_sort_by_birthdate_descending(
    client: TestClient, headers: Headers, add_patient: Callable[..., str]
) -> None:
    old = add_patient(family="Order", birth_date="1950-01-01")
    young = add_patient(family="Order", birth_date="2001-01-01")
    assert _ids(_search(client, headers, "family=order&_sort=-birthdate")) == [young, old]
    assert _ids(_search(client, headers, "family=order&_sort=birthdate")) == [old, young]


def test_sort_by_names_and_gender(
    client: TestClient, headers: Headers, add_patient: Callable[..., str]
) -> None:
    """``_sort`` on a string parameter orders by the folded values; a record with two
    family names sorts by its first in the order asked (its smallest ascending, its
    largest descending); a record without one sorts as "" (first ascending)."""

    def person(families: list[str], given: str, gender: str | None) -> str:
        resource: dict[str, Any] = {
            "resourceType": "Patient",
            "name": [{"family": f, "given": [given]} for f in families] or [{"given": [given]}],
            "identifier": [{"system": MRN, "value": "SORT-" + given}],
        }
        if gender:
            resource["gender"] = gender
        return add_patient(resource)

    zed = person(["Zed"], "Ylva", "female")
    muller = person(["Müller"], "Bo", "male")
    both = person(["Adams", "Young"], "Cy", None)  # married name and maiden name
    nameless = person([], "Ann", "other")
    abel = person(["Muller"], "Al", "male")  # folds like Müller: ties go by id

    def order(sort: str) -> list[str]:
        return _ids(_search(client, headers, f"identifier={MRN}|&_sort={sort}&_count=50"))

    tied = sorted([muller, abel])
    assert order("family") == [nameless, both, *tied, zed]
    assert order("-family") == [zed, both, *tied, nameless]  # "young" is its largest; ties by id
    assert order("given") == [abel, nameless, muller, both, zed]
    assert order("family,given") == [nameless, both, abel, muller, zed]
    assert order("family,-given") == [nameless, both, muller, abel, zed]
    assert order("gender,given")[:2] == [both, zed]  # no gender first, then female
    assert order("name")[0] == both  # "adams" is the smallest name part of all
    # Paged, the keyset cursor carries the sort values: every record once, in order.
    seen, url = [], f"/fhir/Patient?identifier={MRN}|&_sort=-family&_count=2"
    while url:
        reply = client.get(url, headers=headers)
        assert reply.status_code == 200, reply.text
        seen += _ids(reply.json())
        url = _next(reply.json())
    assert seen == order("-family")


def test_summary_count_elements_and_revinclude(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
) -> None:
    golden_id = add_patient(family="Tanaka")
    add_patient(family="Tanaka")
    add_encounter(golden_id)
    counted = _search(client, headers, "family=tanaka&_summary=count")
    assert counted["total"] == 2 and "entry" not in counted
    assert _search(client, headers, "family=tanaka&_count=0")["total"] == 2
    slim = _search(client, headers, "family=tanaka&_elements=birthDate")
    resource = slim["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "birthDate"}
    assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"
    included = _search(client, headers, f"_id={golden_id}&_revinclude=Encounter:subject")
    encounters = [e["resource"] for e in included["entry"] if e["search"]["mode"] == "include"]
    assert [e["subject"]["reference"] for e in encounters] == [f"Patient/{golden_id}"]


def test_huge_count_is_capped(
    client: TestClient, headers: Headers, add_patient: Callable[..., str]
) -> None:
    for _ in range(3):
        add_patient(family="Cap")
    bundle = _search(client, headers, "family=cap&_count=99999999999")
    self_link = bundle["link"][0]["url"]
    assert "_count=50" in self_link and len(_ids(bundle)) == 3


@pytest.mark.parametrize(
    "query",
    [
        "birthdate=1980-13-01",
        "birthdate=19800314",
        "birthdate=xx1980",
        "birthdate=1980-02-30",
        "_lastUpdated=2024-01-01T10:00:00",
        "_count=-1",
        "_count=ten",
        "_sort=phone",
        "_summary=everything",
        "_revinclude=Observation:subject",
        "gender=robot",
        "given:text=Ann",
        "family=",
        "_cursor=forged.cursor",
        "_elements=name.given",
    ],
)
def test_invalid_parameters_are_400_outcomes(
    client: TestClient, headers: Headers, query: str
) -> None:
    reply = client.get(f"/fhir/Patient?{query}", headers=headers)
    assert reply.status_code == 400, reply.text
    outcome = reply.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "invalid"


def test_unknown_parameters_strict_and_lenient(
    client: TestClient, headers: Headers, add_patient: Callable[..., str]
) -> None:
    add_patient(family="Lenient")
    lenient = client.get("/fhir/Patient?family=lenient&shoe-size=9", headers=headers)
    assert lenient.status_code == 200
    assert len(_ids(lenient.json())) == 1
    assert "shoe-size" not in lenient.json()["link"][0]["url"]
    strict = client.get(
        "/fhir/Patient?family=lenient&shoe-size=9",
        headers={**headers, "Prefer": "handling=strict"},
    )
    assert strict.status_code == 400
    assert strict.json()["issue"][0]["expression"] == ["shoe-size"]


@pytest.mark.parametrize(
    "value",
    [
        "' OR '1'='1",
        "x%' OR 1=1 --",
        "%",
        "_",
        "Robert'); DROP TABLE golden_patient;--",
        "\\",
        "a" * 255,
    ],
)
def test_injection_like_values_match_nothing_and_break_nothing(
    client: TestClient, headers: Headers, add_patient: Callable[..., str], value: str
) -> None:
    add_patient(family="Safe")
    for param in (
        "family",
        "name",
        "identifier",
        "email",
        "phone",
        "telecom",
        "_id",
        "address-postalcode",
        "address-city",
        "address-state",
        "address-country",
    ):
        reply = client.get("/fhir/Patient", params={param: value}, headers=headers)
        assert reply.status_code in (200, 400), (param, reply.text)
        if reply.status_code == 200:
            assert _ids(reply.json()) == []
    assert len(_ids(_search(client, headers, "family=safe"))) == 1


def test_a_nul_character_is_a_bad_request_everywhere(
    client: TestClient, headers: Headers, add_patient: Callable[..., str]
) -> None:
    """PostgreSQL text cannot hold NUL (it was a 500 there): the URL is refused before any
    route runs, and a JSON body that carries one where it is read."""
    golden_id = add_patient()
    for url in (
        "/fhir/Patient?identifier=a%00b",
        "/fhir/Patient?name=a%00",
        "/fhir/Encounter?patient=a%00",
        "/fhir/Patient/a%00b",
        "/admin/golden/a%00/links",
    ):
        reply = client.get(url, headers=headers)
        assert reply.status_code == 400, (url, reply.text)
        assert reply.json()["issue"][0]["diagnostics"] == "The URL holds a NUL character (%00)."
    probe = '{"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": '
    probe += '{"resourceType": "Patient", "name": [{"family": "Nul\\u0000"}]}}]}'
    reply = client.post(
        "/fhir/Patient/$match",
        content=probe,
        headers={**headers, "Content-Type": "application/fhir+json"},
    )
    assert reply.status_code == 400 and "NUL character" in reply.text
    escaped = probe.replace("\\u0000", "\\\\u0000")  # a backslash, then "u0000": no NUL
    reply = client.post(
        "/fhir/Patient/$match",
        content=escaped,
        headers={**headers, "Content-Type": "application/fhir+json"},
    )
    assert reply.status_code == 200, reply.text
    assert client.get(f"/fhir/Patient/{golden_id}", headers=headers).status_code == 200


def test_content_negotiation(
    client: TestClient, headers: Headers, add_patient: Callable[..., str]
) -> None:
    url = f"/fhir/Patient/{add_patient()}"
    assert (
        client.get(url, headers={**headers, "Accept": "application/json"})
        .headers["content-type"]
        .startswith("application/json")
    )
    assert (
        client.get(url + "?_format=json", headers=headers)
        .headers["content-type"]
        .startswith("application/fhir+json")
    )
    assert (
        client.get(url + "?_format=application/json", headers=headers)
        .headers["content-type"]
        .startswith("application/json")
    )
    xml = client.get(url, headers={**headers, "Accept": "application/fhir+xml"})
    assert xml.status_code == 406 and xml.json()["resourceType"] == "OperationOutcome"
    assert client.get(url + "?_format=xml", headers=headers).status_code == 406


def test_every_read_is_audited_without_logging_patient_data(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    session_factory: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    golden_id = add_patient(family="Zyxwvutsrq", mrn="SECRET-MRN-42")
    caplog.set_level(logging.DEBUG)
    client.get(f"/fhir/Patient/{golden_id}", headers=headers)
    client.get("/fhir/Patient?family=Zyxwvutsrq", headers=headers)
    client.get("/fhir/Patient/unknown-id", headers=headers)
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        rows = session.scalars(select(Audit).order_by(Audit.id)).all()
    assert [(r.action, r.resource_id, r.outcome) for r in rows] == [
        ("read", golden_id, 200),
        ("search", None, 200),
        ("read", "unknown-id", 404),
    ]
    assert all(r.principal == "reader" for r in rows)
    assert rows[1].query == "family=Zyxwvutsrq" and rows[1].detail["ids"] == [golden_id]
    # The test's own HTTP client logs its URLs; everything the server side logged is checked.
    server_logs = " ".join(
        r.getMessage() + repr(r.__dict__) for r in caplog.records if not r.name.startswith("httpx")
    )
    assert "Zyxwvutsrq" not in server_logs and "SECRET-MRN-42" not in server_logs


def test_queued_audit_rows_are_written_when_the_app_shuts_down(
    state: Any,
    add_patient: Callable[..., str],
    headers: Headers,
    session_factory: sessionmaker[Session],
) -> None:
    from gateway import create_app

    golden_id = add_patient()
    state.audit_flush_interval_s = 3600.0  # nothing is written on a timer
    with TestClient(create_app(state)) as client:
        assert client.get(f"/fhir/Patient/{golden_id}", headers=headers).status_code == 200
    with session_factory() as session:
        assert session.scalars(select(Audit.resource_id)).all() == [golden_id]


def test_reads_work_without_the_app_lifespan(
    state: Any, add_patient: Callable[..., str], headers: Headers
) -> None:
    from gateway import create_app

    golden_id = add_patient()
    client = TestClient(create_app(state))  # no `with`: the lifespan never runs
    assert client.get(f"/fhir/Patient/{golden_id}", headers=headers).status_code == 200
    client.app.state.audit.close()  # type: ignore[attr-defined]
