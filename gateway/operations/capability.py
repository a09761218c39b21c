"""The CapabilityStatement, generated from the routes that are really registered.

https://hl7.org/fhir/R4/capabilitystatement.html. Each FHIR route carries
``x-fhir`` metadata (resource type, interaction or operation name); this module
collects them, so a route that is not registered cannot be claimed and a
registered one cannot be forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.operations.encounters import ENCOUNTER_SEARCH_PARAMS
from gateway.operations.encounters import SUPPORTED as ENCOUNTER_MODIFIERS
from gateway.operations.forms import FORM_SEARCH_PARAMS
from gateway.operations.includes import ADDED_BY
from gateway.operations.merge import UNMERGE_URL
from gateway.operations.questionnaires import QUESTIONNAIRE_SEARCH_PARAMS
from gateway.operations.search_patient import PATIENT_SEARCH_PARAMS
from gateway.operations.search_patient import SUPPORTED as PATIENT_MODIFIERS
from gateway.operations.topics import TOPIC_SEARCH_PARAMS
from sync.delivery import SUBSCRIPTION_PROFILE, SUBSCRIPTION_SEARCH_PARAMS, TOPICS

FHIR_VERSION = "4.0.1"
SEARCH_PARAMS: dict[str, dict[str, tuple[str, str]]] = {
    "Patient": PATIENT_SEARCH_PARAMS,
    "Encounter": ENCOUNTER_SEARCH_PARAMS,
    "Subscription": SUBSCRIPTION_SEARCH_PARAMS,
    "QuestionnaireResponse": FORM_SEARCH_PARAMS,
    "Questionnaire": QUESTIONNAIRE_SEARCH_PARAMS,
    "Basic": TOPIC_SEARCH_PARAMS,
}
#: The modifiers each parameter takes, named in its documentation (R4's searchParam has no
#: element for them).
SEARCH_MODIFIERS: dict[str, Mapping[str, frozenset[str]]] = {
    "Patient": PATIENT_MODIFIERS,
    "Encounter": ENCOUNTER_MODIFIERS,
}
OPERATION_DEFINITIONS = {
    "match": "http://hl7.org/fhir/OperationDefinition/Patient-match",
    "everything": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    "status": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/"
    "backport-subscription-status",
    "events": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/"
    "backport-subscription-events",
    "populate": "http://hl7.org/fhir/uv/sdc/OperationDefinition/Questionnaire-populate",
    "extract": "http://hl7.org/fhir/uv/sdc/OperationDefinition/QuestionnaireResponse-extract",
    "export": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
    "merge": "http://hl7.org/fhir/OperationDefinition/Patient-merge",
    "unmerge": UNMERGE_URL,
}
#: Where one name has a definition per resource type (Bulk Data's Patient-level export).
TYPE_OPERATION_DEFINITIONS = {
    ("Patient", "export"): "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
}
#: The ``x-fhir`` type of a system-level operation (``[base]/$export``).
SYSTEM = "system"
#: What a Bulk Data export server declares (Bulk Data Access IG, STU 2).
BULK_DATA_SERVER = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
#: What a server of topic-based Subscriptions in R4 declares (Subscriptions R5 Backport).
BACKPORT_SERVER = (
    "http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/"
    "backport-subscription-server-r4"
)
TOPIC_CANONICAL_URL = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "capabilitystatement-subscriptiontopic-canonical"
)
#: ``CapabilityStatement.rest.resource`` element of each ``_include`` kind.
INCLUDE_ELEMENTS = {"_include": "searchInclude", "_revinclude": "searchRevInclude"}
SMART_SERVICE = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR",
        }
    ]
}


def capability_statement(
    routes: Iterable[Mapping[str, str]], *, base: str, software: str, version: str, date: str
) -> dict[str, Any]:
    """``routes``: the ``x-fhir`` marks of the registered routes (type, kind, name)."""
    resources: dict[str, dict[str, Any]] = {}
    system_operations: list[dict[str, str]] = []
    for mark in routes:
        if mark["type"] == SYSTEM:
            op = {"name": mark["name"], "definition": OPERATION_DEFINITIONS[mark["name"]]}
            if op not in system_operations:
                system_operations.append(op)
            continue
        entry = resources.setdefault(
            mark["type"], {"type": mark["type"], "interaction": [], "operation": []}
        )
        if mark["kind"] == "interaction":
            if {"code": mark["name"]} not in entry["interaction"]:
                entry["interaction"].append({"code": mark["name"]})
        else:
            definition = TYPE_OPERATION_DEFINITIONS.get(
                (mark["type"], mark["name"]), OPERATION_DEFINITIONS[mark["name"]]
            )
            op = {"name": mark["name"], "definition": definition}
            if op not in entry["operation"]:
                entry["operation"].append(op)
    rest_resources = []
    for rtype in sorted(resources):
        entry = resources[rtype]
        codes = {i["code"] for i in entry["interaction"]}
        out: dict[str, Any] = {
            "type": rtype,
            "interaction": sorted(entry["interaction"], key=lambda i: i["code"]),
            "versioning": "versioned" if "vread" in codes else "no-version",
            "readHistory": "vread" in codes,
            "conditionalRead": "full-support" if "vread" in codes else "not-supported",
        }
        if "search-type" in codes:
            modifiers = SEARCH_MODIFIERS.get(rtype, {})
            out["searchParam"] = [
                {
                    "name": name,
                    "type": kind,
                    "documentation": _with_modifiers(doc, modifiers.get(name, frozenset())),
                }
                for name, (kind, doc) in SEARCH_PARAMS.get(rtype, {}).items()
            ]
            for kind, values in ADDED_BY.get(rtype, {}).items():
                out[INCLUDE_ELEMENTS[kind]] = sorted(values)
        if entry["operation"]:
            out["operation"] = sorted(entry["operation"], key=lambda o: o["name"])
        if rtype == "Subscription":
            out["supportedProfile"] = [SUBSCRIPTION_PROFILE]
            out["extension"] = [
                {"url": TOPIC_CANONICAL_URL, "valueCanonical": url} for url in sorted(TOPICS)
            ]
        rest_resources.append(out)
    instantiates = []
    if "Subscription" in resources:
        instantiates.append(BACKPORT_SERVER)
    if any(op["name"] == "export" for op in system_operations):
        instantiates.append(BULK_DATA_SERVER)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "kind": "instance",
        "software": {"name": software, "version": version},
        "implementation": {"description": "askonce golden Patient records", "url": f"{base}/fhir"},
        **({"instantiates": instantiates} if instantiates else {}),
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "application/json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [SMART_SERVICE],
                    "description": "Bearer tokens from POST /auth/token (client credentials); "
                    "SMART v2 scopes system/Patient.rs, system/Encounter.rs and "
                    "system/Subscription.cruds (v1 .read accepted).",
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [{"url": "token", "valueUri": f"{base}/auth/token"}],
                        }
                    ],
                },
                "resource": rest_resources,
                **(
                    {"operation": sorted(system_operations, key=lambda o: o["name"])}
                    if system_operations
                    else {}
                ),
            }
        ],
    }


def _with_modifiers(doc: str, modifiers: frozenset[str]) -> str:
    if not modifiers:
        return doc
    return f"{doc}. Modifiers: {', '.join(':' + m for m in sorted(modifiers))}"
