"""Validation of FHIR R4 resources with ``fhir.resources.R4B``.

``validate_resource`` runs the pydantic models of ``fhir.resources`` (R4B serves the
R4 Patient and Encounter unchanged) and then the checks those models leave out for
the resources we read: the required value-set bindings (``Patient.gender``,
``Encounter.status``, ``HumanName.use``, ``ContactPoint.system``…) and strict JSON
types for the booleans and integers we copy (the models coerce ``"true"`` to
``True``; FHIR JSON does not, see https://hl7.org/fhir/R4/json.html#primitive).

``check_resource`` gives the same verdict (and, for an invalid resource, the same
errors) without building the model instance: a resource whose *shape* was already seen
valid, the extra checks included, has only its primitive values checked, each by its
field's own pydantic validator and required binding (see :mod:`fhir_mapping.shapes`
and :mod:`fhir_mapping.matchers`); everything else goes through the full model and the
extra checks. tests/fhir_mapping/test_c_fastpath.py holds it to the library's verdict.

Every problem becomes an :class:`~fhir_mapping.errors.Issue` whose path is the
FHIRPath of the element (``Patient.name[0].given``), derived from the pydantic error
location. Bundles and NDJSON are split into their resources here too.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.address import Address
from fhir.resources.R4B.contactpoint import ContactPoint
from fhir.resources.R4B.encounter import Encounter, EncounterStatusHistory
from fhir.resources.R4B.humanname import HumanName
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.patient import Patient, PatientContact, PatientLink
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

from fhir_mapping.errors import ISSUE_CODE_STRUCTURE, InvalidResource, Issue
from fhir_mapping.matchers import Matchers, ShapeTrees
from fhir_mapping.shapes import Bindings, Plans, Unplannable, derive_plan, shape_of

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


# The checks run on every valid resource, so a path string is only built for a failure:
# a location is (prefix, index or None, field), e.g. ("Patient.name", 0, "use").
_At = tuple[str, int | None, str]


def _path(at: _At) -> str:
    prefix, index, field = at
    base = prefix if index is None else f"{prefix}[{index}]"
    return f"{base}.{field}" if field else base


def _binding(issues: list[Issue], value: object, allowed: frozenset[str], at: _At) -> None:
    if value is not None and value not in allowed:
        issues.append(Issue(_path(at), "code is not in the required value set"))


def _strict(issues: list[Issue], value: object, kind: type, at: _At) -> None:
    """FHIR JSON types are not coerced: ``true`` not ``"true"``, ``1`` not ``"1"``, and
    dates are strings (the models would read ``0.0`` as 1970-01-01)."""
    if value is None or (type(value) is kind):
        return
    issues.append(Issue(_path(at), f"must be a JSON {_JSON_TYPE_NAMES[kind]}"))


_JSON_TYPE_NAMES = {bool: "boolean", int: "integer", str: "string"}


def _check_period(issues: list[Issue], period: Any, prefix: str, index: int | None) -> None:
    if period:
        _strict(issues, period.get("start"), str, (prefix, index, "period.start"))
        _strict(issues, period.get("end"), str, (prefix, index, "period.end"))


def _check_name(issues: list[Issue], name: dict[str, Any], prefix: str, index: int | None) -> None:
    _binding(issues, name.get("use"), NAME_USES, (prefix, index, "use"))
    _check_period(issues, name.get("period"), prefix, index)


def _check_contact_points(issues: list[Issue], items: Any, prefix: str) -> None:
    for i, cp in enumerate(items or ()):
        _binding(issues, cp.get("system"), CONTACT_SYSTEMS, (prefix, i, "system"))
        _binding(issues, cp.get("use"), CONTACT_USES, (prefix, i, "use"))
        _strict(issues, cp.get("rank"), int, (prefix, i, "rank"))
        _check_period(issues, cp.get("period"), prefix, i)


def _check_address(
    issues: list[Issue], address: dict[str, Any], prefix: str, index: int | None
) -> None:
    _binding(issues, address.get("use"), ADDRESS_USES, (prefix, index, "use"))
    _binding(issues, address.get("type"), ADDRESS_TYPES, (prefix, index, "type"))
    _check_period(issues, address.get("period"), prefix, index)


def _check_patient(raw: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    p = "Patient"
    _binding(issues, raw.get("gender"), GENDERS, (p, None, "gender"))
    _strict(issues, raw.get("birthDate"), str, (p, None, "birthDate"))
    _strict(issues, raw.get("deceasedDateTime"), str, (p, None, "deceasedDateTime"))
    _strict(issues, raw.get("active"), bool, (p, None, "active"))
    _strict(issues, raw.get("deceasedBoolean"), bool, (p, None, "deceasedBoolean"))
    _strict(issues, raw.get("multipleBirthBoolean"), bool, (p, None, "multipleBirthBoolean"))
    _strict(issues, raw.get("multipleBirthInteger"), int, (p, None, "multipleBirthInteger"))
    meta = raw.get("meta")
    if meta:
        _strict(issues, meta.get("lastUpdated"), str, (p, None, "meta.lastUpdated"))
    for i, name in enumerate(raw.get("name") or ()):
        _check_name(issues, name, "Patient.name", i)
    _check_contact_points(issues, raw.get("telecom"), "Patient.telecom")
    for i, address in enumerate(raw.get("address") or ()):
        _check_address(issues, address, "Patient.address", i)
    for i, ident in enumerate(raw.get("identifier") or ()):
        _binding(issues, ident.get("use"), IDENTIFIER_USES, ("Patient.identifier", i, "use"))
        _check_period(issues, ident.get("period"), "Patient.identifier", i)
    for i, comm in enumerate(raw.get("communication") or ()):
        _strict(issues, comm.get("preferred"), bool, ("Patient.communication", i, "preferred"))
    for i, contact in enumerate(raw.get("contact") or ()):
        base = f"Patient.contact[{i}]"
        _binding(issues, contact.get("gender"), GENDERS, (base, None, "gender"))
        if contact.get("name"):
            _check_name(issues, contact["name"], f"{base}.name", None)
        if contact.get("address"):
            _check_address(issues, contact["address"], f"{base}.address", None)
        _check_contact_points(issues, contact.get("telecom"), f"{base}.telecom")
        _check_period(issues, contact.get("period"), base, None)
    for i, link in enumerate(raw.get("link") or ()):
        _binding(issues, link.get("type"), LINK_TYPES, ("Patient.link", i, "type"))
    return issues


def _check_encounter(raw: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    _binding(issues, raw.get("status"), ENCOUNTER_STATUSES, ("Encounter", None, "status"))
    _check_period(issues, raw.get("period"), "Encounter", None)
    meta = raw.get("meta")
    if meta:
        _strict(issues, meta.get("lastUpdated"), str, ("Encounter", None, "meta.lastUpdated"))
    for i, item in enumerate(raw.get("statusHistory") or ()):
        prefix = "Encounter.statusHistory"
        _binding(issues, item.get("status"), ENCOUNTER_STATUSES, (prefix, i, "status"))
        _check_period(issues, item.get("period"), prefix, i)
    for key in ("participant", "location"):
        for i, item in enumerate(raw.get(key) or ()):
            _check_period(issues, item.get("period"), f"Encounter.{key}", i)
    return issues


#: The fast path does not run these: a planned shape fixes what ``_strict`` checks, and
#: each ``_binding`` must have its (model, field) in ``_BINDINGS`` below. A check of any
#: other kind needs its own place in the plans (tests/fhir_mapping/test_c_fastpath.py
#: refuses a bad code at every bound path of a planned shape).
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


def _resolve_model(
    raw: Any, expected_type: str | None
) -> tuple[type[FHIRAbstractModel], str, str | None]:
    """The model class of ``raw`` with its type and id; InvalidResource if there is none."""
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
    return model, resource_type, resource_id


def _extra_checks(raw: dict[str, Any], resource_type: str, resource_id: str | None) -> None:
    check = _EXTRA_CHECKS.get(resource_type)
    if check is not None:
        issues = check(raw)
        if issues:
            raise InvalidResource(resource_type, resource_id, issues)


def _model_validate(
    model: type[FHIRAbstractModel], raw: dict[str, Any], resource_type: str, resource_id: str | None
) -> FHIRAbstractModel:
    """``model.model_validate(raw)``, its errors as InvalidResource."""
    try:
        return model.model_validate(raw)
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


def validate_resource(raw: Any, expected_type: str | None = None) -> FHIRAbstractModel:
    """Validate FHIR R4 JSON and return the ``fhir.resources.R4B`` model instance.

    Raises :class:`InvalidResource` (and nothing else) for any input that is not a
    valid resource, or not of ``expected_type`` when that is given. Always runs the full
    model; :func:`check_resource` gives the same verdict faster when no instance is needed."""
    model, resource_type, resource_id = _resolve_model(raw, expected_type)
    instance = _model_validate(model, raw, resource_type, resource_id)
    _extra_checks(raw, resource_type, resource_id)
    _remember_shape(model, raw, instance)
    return instance


#: The required bindings of the extra checks, by the model and field they sit on, for
#: the plans: with them (and the JSON types, which a shape fixes) a resource whose shape
#: passed the extra checks once needs none of them again (~4.6 us of a Patient's check).
_BINDINGS: Bindings = {
    (Patient, "gender"): GENDERS,
    (PatientContact, "gender"): GENDERS,
    (PatientLink, "type"): LINK_TYPES,
    (HumanName, "use"): NAME_USES,
    (ContactPoint, "system"): CONTACT_SYSTEMS,
    (ContactPoint, "use"): CONTACT_USES,
    (Address, "use"): ADDRESS_USES,
    (Address, "type"): ADDRESS_TYPES,
    (Identifier, "use"): IDENTIFIER_USES,
    (Encounter, "status"): ENCOUNTER_STATUSES,
    (EncounterStatusHistory, "status"): ENCOUNTER_STATUSES,
}
#: Plans of the resource shapes seen valid, extra checks included (see
#: :mod:`fhir_mapping.shapes`).
_PLANS = Plans(bindings=_BINDINGS)
#: Compiled matchers of the planned shapes (see :mod:`fhir_mapping.matchers`), and the
#: decision trees of the top-level key tuples with several.
_MATCHERS = Matchers()
_TREES = ShapeTrees()
#: Held while a plan is derived (checker ids are allocated then).
_DERIVE_LOCK = threading.Lock()


def _shape_key(raw: dict[str, Any]) -> tuple[tuple[Any, ...], list[Any]]:
    tokens: list[Any] = []
    leaves: list[Any] = []
    shape_of(raw, tokens, leaves)
    return tuple(tokens), leaves


def _remember_shape(
    model: type[FHIRAbstractModel], raw: dict[str, Any], instance: FHIRAbstractModel
) -> None:
    """Derive and keep the plan of a resource the full model and the extra checks found
    valid. Every resource of its shape then passes the extra checks' JSON type checks
    (the shape fixes each value's JSON type, and which lists and objects are empty), and
    the plan's checkers hold the bindings."""
    try:
        shape, _ = _shape_key(raw)
    except (Unplannable, RecursionError):
        return
    if _PLANS.get(shape) is not False:
        return
    with _DERIVE_LOCK:
        try:
            plan: tuple[int, ...] | None = derive_plan(model, raw, instance, _PLANS.checkers)
        except (Unplannable, RecursionError):
            plan = None
        _PLANS.put(shape, plan)
    if plan is not None:
        _MATCHERS.add(raw, plan)


def check_resource(raw: Any, expected_type: str | None = None) -> None:
    """The verdict of :func:`validate_resource` without the model instance.

    A resource whose shape was already seen valid (recognised by its compiled matcher or
    its key tuple's shape tree, else by its shape key) is checked by its primitive values
    only (each by its field's pydantic validator and binding, memoized); the first
    resource of a shape, one that fails any check, and anything unexpected go through
    the full model, so every error reported is the library's own."""
    model, resource_type, resource_id = _resolve_model(raw, expected_type)
    matched = _MATCHERS.find(raw) or _TREES.find(raw)
    if matched is not None:
        plan: tuple[int, ...] | bool | None = matched[0]
        leaves: Sequence[Any] = matched[1]
    else:
        try:
            shape, leaves = _shape_key(raw)
        except (Unplannable, RecursionError):
            shape, leaves = (), []
        plan = _PLANS.get(shape) if shape else None
        if isinstance(plan, tuple) and _MATCHERS.add(raw, plan):
            _TREES.add(raw, shape, plan)
    if isinstance(plan, tuple) and _PLANS.checkers.accept(plan, leaves):
        return
    instance = _model_validate(model, raw, resource_type, resource_id)
    _extra_checks(raw, resource_type, resource_id)
    if plan is False:
        _remember_shape(model, raw, instance)


def clear_shape_plans() -> None:
    """Forget every shape plan and memoized verdict (tests measure cold checks)."""
    global _PLANS, _MATCHERS, _TREES
    _PLANS = Plans(bindings=_BINDINGS)
    _MATCHERS = Matchers()
    _TREES = ShapeTrees()


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
