"""``render_golden_patient``: a golden record as FHIR R4 Patient JSON.

The output carries ``meta.versionId``/``meta.lastUpdated``, every surviving identifier
with its source system, names/telecom/addresses in survivorship order (telecom also
gets ``rank`` 1..n, https://hl7.org/fhir/R4/datatypes.html#ContactPoint), the
``Patient.link`` entries (https://hl7.org/fhir/R4/patient.html#link) and a pointer to
the Provenance of the record. It is validated with ``fhir.resources`` before it is
returned, so a consumer never receives a resource we could not read ourselves.
"""

from __future__ import annotations

from typing import Any

from fhir_mapping.identifiers import v2_type
from fhir_mapping.model import (
    Address,
    ContactPoint,
    GoldenRecord,
    Identifier,
    Period,
    PersonName,
    SourcePatient,
)
from fhir_mapping.patient import US_CORE_BIRTH_SEX
from fhir_mapping.validate import check_resource

#: Extension pointing at the Provenance resource(s) of a golden record.
PROVENANCE_EXTENSION = "https://askonce.dev/fhir/StructureDefinition/golden-provenance"


# The element renderers below build each JSON object key by key, in FHIR's element
# order, leaving out what is absent: FHIR JSON has no nulls and no empty arrays or
# objects (https://hl7.org/fhir/R4/json.html). Their string fields hold a string or
# None, their list fields strings only.


def _period(period: Period | None) -> dict[str, str] | None:
    if period is None:
        return None
    out: dict[str, str] = {}
    if period.start is not None:
        out["start"] = period.start
    if period.end is not None:
        out["end"] = period.end
    return out or None


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    """Drop empty values: FHIR JSON has no nulls and no empty arrays or objects."""
    return {k: v for k, v in data.items() if v is not None and v != [] and v != {}}


def _identifier(ident: Identifier) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ident.use is not None:
        out["use"] = ident.use
    if ident.type is not None:
        out["type"] = ident.type
    elif ident.type_code:
        out["type"] = v2_type(ident.type_code)
    if ident.system is not None:
        out["system"] = ident.system
    if ident.value is not None:
        out["value"] = ident.value
    period = _period(ident.period)
    if period is not None:
        out["period"] = period
    return out


def _name(name: PersonName) -> dict[str, Any] | None:
    """The HumanName, or None when it would carry no name at all (only use/period)."""
    out: dict[str, Any] = {}
    if name.use is not None:
        out["use"] = name.use
    if name.text is not None:
        out["text"] = name.text
    if name.family is not None:
        out["family"] = name.family
    if name.given:
        out["given"] = list(name.given)
    if name.prefix:
        out["prefix"] = list(name.prefix)
    if name.suffix:
        out["suffix"] = list(name.suffix)
    if len(out) == (name.use is not None):
        return None
    period = _period(name.period)
    if period is not None:
        out["period"] = period
    return out


def _telecom(point: ContactPoint, rank: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if point.system is not None:
        out["system"] = point.system
    if point.value is not None:
        out["value"] = point.value
    if point.use is not None:
        out["use"] = point.use
    out["rank"] = rank
    period = _period(point.period)
    if period is not None:
        out["period"] = period
    return out


def _address(address: Address) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if address.use is not None:
        out["use"] = address.use
    if address.type is not None:
        out["type"] = address.type
    if address.text is not None:
        out["text"] = address.text
    if address.line:
        out["line"] = list(address.line)
    if address.city is not None:
        out["city"] = address.city
    if address.district is not None:
        out["district"] = address.district
    if address.state is not None:
        out["state"] = address.state
    if address.postal_code is not None:
        out["postalCode"] = address.postal_code
    if address.country is not None:
        out["country"] = address.country
    period = _period(address.period)
    if period is not None:
        out["period"] = period
    return out


def _communication(language: dict[str, Any]) -> dict[str, Any] | None:
    coding = _compact(
        {
            "system": language.get("system"),
            "code": language.get("code"),
            "display": language.get("display"),
        }
    )
    if not coding.get("code"):
        return None
    return _compact({"language": {"coding": [coding]}, "preferred": language.get("preferred")})


def render_golden_patient(
    golden: GoldenRecord,
    *,
    version: int | None = None,
    last_updated: str | None = None,
    provenance_url: str | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """The golden record as FHIR R4 Patient JSON, validated before it is returned.

    Raises :class:`~fhir_mapping.errors.InvalidResource` if the record cannot be
    rendered as a valid Patient (a value that survived from a source is malformed).
    ``validate=False`` skips the check, for callers whose parts all come from
    :func:`~fhir_mapping.parse_patient` (see :func:`mpi.storage.write_goldens`)."""
    extensions: list[dict[str, Any]] = []
    if golden.race:
        extensions.append(golden.race)
    if golden.ethnicity:
        extensions.append(golden.ethnicity)
    if golden.birth_sex:
        extensions.append({"url": US_CORE_BIRTH_SEX, "valueCode": golden.birth_sex})
    if provenance_url:
        extensions.append(
            {"url": PROVENANCE_EXTENSION, "valueReference": {"reference": provenance_url}}
        )
    # Key by key in FHIR's element order, leaving out None and empty lists and objects
    # (what _compact of the whole dict did, at ~1/5 of the time of this function).
    resource: dict[str, Any] = {"resourceType": "Patient"}
    if golden.id is not None:
        resource["id"] = golden.id
    meta: dict[str, Any] = {}
    if version is not None:
        meta["versionId"] = str(version)
    if last_updated is not None:
        meta["lastUpdated"] = last_updated
    if meta:
        resource["meta"] = meta
    if extensions:
        resource["extension"] = extensions
    identifiers = [_identifier(i) for i in golden.identifiers if i.value]
    if identifiers:
        resource["identifier"] = identifiers
    if golden.active is not None:
        resource["active"] = golden.active
    names = [n for n in (_name(x) for x in golden.names) if n is not None]
    if names:
        resource["name"] = names
    telecom = [_telecom(t, i) for i, t in enumerate((t for t in golden.telecom if t.value), 1)]
    if telecom:
        resource["telecom"] = telecom
    if golden.gender is not None:
        resource["gender"] = golden.gender
    if golden.birth_date is not None:
        resource["birthDate"] = golden.birth_date
    if golden.deceased_datetime is not None:
        resource["deceasedDateTime"] = golden.deceased_datetime
    elif golden.deceased is not None:
        resource["deceasedBoolean"] = golden.deceased
    addresses = [a for a in (_address(x) for x in golden.addresses) if a]
    if addresses:
        resource["address"] = addresses
    if golden.marital_status is not None:
        resource["maritalStatus"] = golden.marital_status
    if isinstance(golden.multiple_birth, bool):
        resource["multipleBirthBoolean"] = golden.multiple_birth
    elif golden.multiple_birth is not None:
        resource["multipleBirthInteger"] = golden.multiple_birth
    if golden.contacts:
        resource["contact"] = list(golden.contacts)
    communication = [c for c in (_communication(x) for x in golden.languages) if c]
    if communication:
        resource["communication"] = communication
    if golden.links:
        resource["link"] = [
            {"other": {"reference": f"Patient/{link.other_id}"}, "type": link.type}
            for link in golden.links
        ]
    if validate:
        check_resource(resource, "Patient")
    return resource


def golden_record_from_patient(patient: SourcePatient, golden_id: str) -> GoldenRecord:
    """The golden record of a person known from one source record only."""
    return GoldenRecord(
        id=golden_id,
        names=list(patient.names),
        birth_date=patient.birth_date,
        gender=patient.gender,
        deceased=patient.deceased,
        deceased_datetime=patient.deceased_datetime,
        identifiers=list(patient.identifiers),
        telecom=list(patient.telecom),
        addresses=list(patient.addresses),
        languages=list(patient.languages),
        race=patient.race,
        ethnicity=patient.ethnicity,
        birth_sex=patient.birth_sex,
        active=patient.active is not False,
        multiple_birth=patient.multiple_birth,
        contacts=list(patient.contacts),
        marital_status=patient.marital_status,
    )
