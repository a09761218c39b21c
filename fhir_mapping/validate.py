"""Validation of FHIR R4 resources with ``fhir.resources.R4B``.

``validate_resource`` runs the pydantic models of ``fhir.resources`` (R4B serves the
R4 Patient and Encounter unchanged) and then the checks those models leave out for
the resources we read: the required value-set bindings (``Patient.gender``,
``Encounter.status``, ``HumanName.use``, ``ContactPoint.system``…) and strict JSON
types for the booleans and integers we copy (the models coerce ``"true"`` to
``True``; FHIR JSON does not, see https://hl7.org/fhir/R4/json.html#primitive).

Every problem becomes an :class:`~fhir_mapping.errors.Issue` whose path is the
FHIRPath of the element (``Patient.name[0].given``), derived from the pydantic error
location. Bundles and NDJSON are split into their resources here too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.patient import Patient
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

from fhir_mapping.errors import ISSUE_CODE_STRUCTURE, InvalidResource, Issue

_IDENTIFIER_PART = re.compile(r"^_?[A-Za-z][A-Za-z0-9_]*$")
#: Model classes looked up once; Patient and Encounter are the hot path.
_MODELS: dict[str, type[FHIRAbstractModel]] = {"Patient": Patient, "Encounter": Encounter}

#: Required bindings (https://hl7.org/fhir/R4/terminologies.html#required) of the elements
#: askonce reads, as (resource type, path of list/object keys, allowed codes).
GENDERS = frozenset({"male", "female", "other", "unknown"})
NAME_USES = frozenset({"usual", "official", "temp", "nickname", "anonymous", "old", "maiden"})
CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
CONTACT_USES = frozenset({"home", "work", "temp", "old", "mobile"})
ADDRESS_USES = frozenset({"home", "work", "temp", "old", "billing"})
ADDRESS_TYPES = frozenset({"postal", "physical", "both"})
IDENTIFIER_USES = frozenset({"usual", "official", "temp", "secondary", "old"})
LINK_TYPES = frozenset({"replaced-by", "replaces", "refer", "seealso"})
ENCOUNTER_STATUSES = frozenset(
    {
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)


def fhir_path(resource_type: str, loc: Iterable[int | str]) -> str:
    """FHIRPath of a pydantic error location: ("name", 0, "given") -> "Patient.name[0].given"."""
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER_PART.match(part):
            path += "." + part.removesuffix("__ext").removesuffix("_fhir")
    return path


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _binding(issues: list[Issue], path: str, value: object, allowed: frozenset[str]) -> None:
    if value is not None and value not in allowed:
        issues.append(Issue(path, "code is not in the required value set"))


def _strict(issues: list[Issue], path: str, value: object, kind: type) -> None:
    """FHIR JSON types are not coerced: ``true`` not ``"true"``, ``1`` not ``"1"``, and
    dates are strings (the models would read ``0.0`` as 1970-01-01)."""
    if value is None:
        return
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not ok:
        issues.append(Issue(path, f"must be a JSON {_JSON_TYPE_NAMES[kind]}"))


_JSON_TYPE_NAMES = {bool: "boolean", int: "integer", str: "string"}


def _check_period(issues: list[Issue], path: str, period: Any) -> None:
    if period:
        _strict(issues, f"{path}.start", period.get("start"), str)
        _strict(issues, f"{path}.end", period.get("end"), str)


def _check_name(issues: list[Issue], path: str, name: dict[str, Any]) -> None:
    _binding(issues, f"{path}.use", name.get("use"), NAME_USES)
    _check_period(issues, f"{path}.period", name.get("period"))


def _check_contact_points(issues: list[Issue], base: str, items: Any) -> None:
    for i, cp in enumerate(items or ()):
        _binding(issues, f"{base}[{i}].system", cp.get("system"), CONTACT_SYSTEMS)
        _binding(issues, f"{base}[{i}].use", cp.get("use"), CONTACT_USES)
        _strict(issues, f"{base}[{i}].rank", cp.get("rank"), int)
        _check_period(issues, f"{base}[{i}].period", cp.get("period"))


def _check_address(issues: list[Issue], path: str, address: dict[str, Any]) -> None:
    _binding(issues, f"{path}.use", address.get("use"), ADDRESS_USES)
    _binding(issues, f"{path}.type", address.get("type"), ADDRESS_TYPES)
    _check_period(issues, f"{path}.period", address.get("period"))


def _check_patient(raw: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    _binding(issues, "Patient.gender", raw.get("gender"), GENDERS)
    _strict(issues, "Patient.birthDate", raw.get("birthDate"), str)
    _strict(issues, "Patient.deceasedDateTime", raw.get("deceasedDateTime"), str)
    _strict(issues, "Patient.active", raw.get("active"), bool)
    _strict(issues, "Patient.deceasedBoolean", raw.get("deceasedBoolean"), bool)
    _strict(issues, "Patient.multipleBirthBoolean", raw.get("multipleBirthBoolean"), bool)
    _strict(issues, "Patient.multipleBirthInteger", raw.get("multipleBirthInteger"), int)
    meta = raw.get("meta")
    if meta:
        _strict(issues, "Patient.meta.lastUpdated", meta.get("lastUpdated"), str)
    for i, name in enumerate(raw.get("name") or ()):
        _check_name(issues, f"Patient.name[{i}]", name)
    _check_contact_points(issues, "Patient.telecom", raw.get("telecom"))
    for i, address in enumerate(raw.get("address") or ()):
        _check_address(issues, f"Patient.address[{i}]", address)
    for i, ident in enumerate(raw.get("identifier") or ()):
        _binding(issues, f"Patient.identifier[{i}].use", ident.get("use"), IDENTIFIER_USES)
        _check_period(issues, f"Patient.identifier[{i}].period", ident.get("period"))
    for i, comm in enumerate(raw.get("communication") or ()):
        _strict(issues, f"Patient.communication[{i}].preferred", comm.get("preferred"), bool)
    for i, contact in enumerate(raw.get("contact") or ()):
        base = f"Patient.contact[{i}]"
        _binding(issues, f"{base}.gender", contact.get("gender"), GENDERS)
        if contact.get("name"):
            _check_name(issues, f"{base}.name", contact["name"])
        if contact.get("address"):
            _check_address(issues, f"{base}.address", contact["address"])
        _check_contact_points(issues, f"{base}.telecom", contact.get("telecom"))
        _check_period(issues, f"{base}.period", contact.get("period"))
    for i, link in enumerate(raw.get("link") or ()):
        _binding(issues, f"Patient.link[{i}].type", link.get("type"), LINK_TYPES)
    return issues


def _check_encounter(raw: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    _binding(issues, "Encounter.status", raw.get("status"), ENCOUNTER_STATUSES)
    _check_period(issues, "Encounter.period", raw.get("period"))
    meta = raw.get("meta")
    if meta:
        _strict(issues, "Encounter.meta.lastUpdated", meta.get("lastUpdated"), str)
    for i, item in enumerate(raw.get("statusHistory") or ()):
        path = f"Encounter.statusHistory[{i}]"
        _binding(issues, f"{path}.status", item.get("status"), ENCOUNTER_STATUSES)
        _check_period(issues, f"{path}.period", item.get("period"))
    for key in ("participant", "location"):
        for i, item in enumerate(raw.get(key) or ()):
            _check_period(issues, f"Encounter.{key}[{i}].period", item.get("period"))
    return issues


_EXTRA_CHECKS = {"Patient": _check_patient, "Encounter": _check_encounter}


def _model_class(resource_type: str) -> type[FHIRAbstractModel] | None:
    model = _MODELS.get(resource_type)
    if model is not None:
        return model
    try:
        found = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None
    _MODELS[resource_type] = found
    return found


def validate_resource(raw: Any, expected_type: str | None = None) -> FHIRAbstractModel:
    """Validate FHIR R4 JSON and return the ``fhir.resources.R4B`` model instance.

    Raises :class:`InvalidResource` (and nothing else) for any input that is not a
    valid resource, or not of ``expected_type`` when that is given."""
    if not isinstance(raw, dict):
        raise InvalidResource(
            expected_type,
            None,
            [
                Issue(
                    expected_type or "Resource",
                    "a resource must be a JSON object",
                    ISSUE_CODE_STRUCTURE,
                )
            ],
        )
    resource_type = _text_or_none(raw.get("resourceType"))
    resource_id = _text_or_none(raw.get("id"))
    if expected_type is not None and resource_type != expected_type:
        raise InvalidResource(
            resource_type or expected_type,
            resource_id,
            [Issue(f"{expected_type}.resourceType", f"expected a {expected_type}")],
        )
    model = _model_class(resource_type) if resource_type else None
    if model is None or resource_type is None:
        raise InvalidResource(
            resource_type,
            resource_id,
            [Issue("Resource.resourceType", "not a FHIR R4 resource type", ISSUE_CODE_STRUCTURE)],
        )
    try:
        instance = model.model_validate(raw)
    except ValidationError as exc:
        issues = [
            Issue(fhir_path(resource_type, err["loc"]), err["msg"].removeprefix("Value error, "))
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise InvalidResource(resource_type, resource_id, issues) from None
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        # Some fhir.resources validators raise plain errors on shapes pydantic lets through.
        raise InvalidResource(
            resource_type, resource_id, [Issue(resource_type, type(exc).__name__)]
        ) from None
    check = _EXTRA_CHECKS.get(resource_type)
    if check is not None:
        issues = check(raw)
        if issues:
            raise InvalidResource(resource_type, resource_id, issues)
    return instance


def bundle_resources(bundle: Any) -> Iterator[dict[str, Any] | InvalidResource]:
    """The resources of a Bundle's entries, each as raw JSON or as the error that says
    why the entry is unusable. The Bundle itself is not validated as a whole, so one bad
    entry never hides the good ones (https://hl7.org/fhir/R4/bundle.html)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidResource(
            _text_or_none(bundle.get("resourceType")) if isinstance(bundle, dict) else None,
            None,
            [Issue("Bundle.resourceType", "expected a Bundle", ISSUE_CODE_STRUCTURE)],
        )
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidResource(
            "Bundle",
            _text_or_none(bundle.get("id")),
            [Issue("Bundle.entry", "must be a JSON array")],
        )
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            yield resource
        else:
            yield InvalidResource(
                None,
                None,
                [
                    Issue(
                        f"Bundle.entry[{i}].resource", "entry has no resource", ISSUE_CODE_STRUCTURE
                    )
                ],
            )


def ndjson_resources(lines: Iterable[str | bytes]) -> Iterator[dict[str, Any] | InvalidResource]:
    """The resources of an NDJSON stream (https://hl7.org/fhir/uv/bulkdata/export.html),
    one per non-blank line, each as raw JSON or as the error for an unparseable line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            yield InvalidResource(
                None, None, [Issue(f"line {number}", "not valid JSON", ISSUE_CODE_STRUCTURE)]
            )
            continue
        if isinstance(value, dict):
            yield value
        else:
            yield InvalidResource(
                None,
                None,
                [Issue(f"line {number}", "a resource must be a JSON object", ISSUE_CODE_STRUCTURE)],
            )
