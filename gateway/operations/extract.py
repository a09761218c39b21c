"""SDC ``QuestionnaireResponse/$extract``: FHIR resources from a completed form.

https://hl7.org/fhir/uv/sdc/OperationDefinition-QuestionnaireResponse-extract.html
(SDC 4.0.0). ``$populate`` fills a portal's form from the golden record; this is the
way back: the answers the patient reviewed become resources again. The operation
itself writes nothing (the SDC says so); a portal that wants the answers to reach the
golden record submits the QuestionnaireResponse instead (``POST /fhir/QuestionnaireResponse``,
:mod:`gateway.operations.forms`), which runs this same extraction.

Input: a ``Parameters`` resource with ``questionnaire-response`` and, unless the form is
stored here (``PUT /fhir/Questionnaire/{id}``) under the canonical the response names,
``questionnaire``; or a bare QuestionnaireResponse whose ``questionnaire`` names a
contained Questionnaire (``#id``) or a stored one.

**Definition-based extraction** (https://hl7.org/fhir/uv/sdc/extraction.html#definition-based-extraction):

- ``sdc-questionnaire-definitionExtract`` on the root (one resource) or on a group (one
  resource per repetition) says which resource (or profile) is built; the legacy
  ``sdc-questionnaire-itemExtractionContext`` with a resource type is read the same way;
- an item's ``definition`` (``<canonical>#<element path>``) says where its answers go:
  a group with a definition (``Patient.name``) makes one element per repetition, under
  which its children's definitions (``Patient.name.given``) land; a question's answers are
  converted to the element's type (a ``choice`` answer's code for a ``code`` element, a
  Coding in a CodeableConcept, a date from a dateTime…), read from the ``fhir.resources``
  model of the type, so every R4 resource type works;
- a question whose path crosses a repeating element (``Patient.telecom.value``) fills the
  element the items before it started when that slot is free and nothing fixed on it
  disagrees, else starts a new one: ``family`` then ``given`` make one name, two phone
  numbers two ContactPoints;
- ``sdc-questionnaire-definitionExtractValue`` sets an element without an answer, from a
  ``fixed-value`` or a FHIRPath ``expression`` (evaluated over the response item, with
  ``%resource`` the QuestionnaireResponse); on a question it applies to the element that
  question's answer made (the ``system`` and ``use`` of its ContactPoint);
- ``sdc-questionnaire-extractAllocateId`` names ``urn:uuid`` ids available to the
  expressions (and to ``definitionExtract``'s ``fullUrl``).

Output: ``return``, a transaction Bundle with one entry per resource (POST, or PUT when the
form carried the resource's ``id``), and ``issues``, the warnings: an answer that does not
fit its element, a definition outside its extraction context, an extracted resource that
is not valid (``fhir.resources`` says which paths; it is left out of the Bundle, which
stays valid FHIR). Warnings name the item's ``linkId`` or the FHIR path, never a value.
Observation- and StructureMap-based extraction and the template-based extraction of
SDC 4 are not done here: an item using them gets a warning.
"""

from __future__ import annotations

import re
import types
import typing
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from gateway.operations.populate import (
    FHIRPATH,
    SDC,
    Expressions,
    Forms,
    check_questionnaire,
    find_extension,
)
from gateway.outcomes import OutcomeError, bad_request, issue, operation_outcome, unprocessable

DEFINITION_EXTRACT = SDC + "sdc-questionnaire-definitionExtract"
DEFINITION_EXTRACT_VALUE = SDC + "sdc-questionnaire-definitionExtractValue"
ITEM_EXTRACTION_CONTEXT = SDC + "sdc-questionnaire-itemExtractionContext"
ALLOCATE_ID = SDC + "sdc-questionnaire-extractAllocateId"
OBSERVATION_EXTRACT = SDC + "sdc-questionnaire-observationExtract"
TEMPLATE_EXTRACT = SDC + "sdc-questionnaire-templateExtract"
TARGET_STRUCTURE_MAP = SDC + "sdc-questionnaire-targetStructureMap"
BASE_DEFINITION = "http://hl7.org/fhir/StructureDefinition/"
#: ``<canonical>#<Type.element.element>`` (an element id without slices).
_DEFINITION = re.compile(
    r"^(?P<canonical>[^#]+)#(?P<path>[A-Z][A-Za-z]*(?:\.[a-z][A-Za-z]*(?:\[x\])?)*)$"
)
#: The most resources one form may extract (a repeating group makes one per repetition).
MAX_RESOURCES = 200
#: QuestionnaireResponse statuses a form is extracted from.
EXTRACTABLE_STATUSES = frozenset({"completed", "amended"})
#: Answer keys, and the FHIR type names a choice element (``deceased[x]``) is tried with.
_CHOICE_TYPES: dict[str, tuple[str, ...]] = {
    "valueBoolean": ("Boolean",),
    "valueDecimal": ("Decimal",),
    "valueInteger": ("Integer", "Decimal"),
    "valueDate": ("Date", "DateTime"),
    "valueDateTime": ("DateTime",),
    "valueTime": ("Time",),
    "valueString": ("String",),
    "valueUri": ("Uri",),
    "valueAttachment": ("Attachment",),
    "valueCoding": ("CodeableConcept", "Coding"),
    "valueQuantity": ("Quantity",),
    "valueReference": ("Reference",),
}
_TEXT_KINDS = frozenset({"String", "Markdown"})
_CODE_KINDS = frozenset({"Code", "Id"})
_URI_KINDS = frozenset({"Uri", "Url", "Canonical", "Oid", "Uuid"})
_INTEGER_KINDS = frozenset({"Integer", "PositiveInt", "UnsignedInt", "Integer64"})


# --- the request -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExtractRequest:
    response: dict[str, Any]
    questionnaire: dict[str, Any]


def _contained_questionnaire(response: dict[str, Any]) -> dict[str, Any] | None:
    reference = response.get("questionnaire")
    if not isinstance(reference, str) or not reference.startswith("#"):
        return None
    for resource in response.get("contained") or []:
        if (
            isinstance(resource, dict)
            and resource.get("resourceType") == "Questionnaire"
            and resource.get("id") == reference[1:]
        ):
            return resource
    return None


def _without(response: dict[str, Any], form: dict[str, Any]) -> dict[str, Any]:
    """``response`` without the contained ``form``."""
    others = [r for r in response["contained"] if r is not form]
    out = {k: v for k, v in response.items() if k != "contained"}
    return {**out, "contained": others} if others else out


def _canonical_url(value: Any) -> str | None:
    return value.partition("|")[0] if isinstance(value, str) and value else None


def check_response(
    response: Any, questionnaire: dict[str, Any] | None, forms: Forms | None = None
) -> ExtractRequest:
    """A QuestionnaireResponse and its Questionnaire, both valid; 422 naming the problem.

    The Questionnaire is ``questionnaire``; without it, the one the response contains, or
    the one of ``forms`` (those stored here) its ``questionnaire`` canonical names."""
    if not isinstance(response, dict) or response.get("resourceType") != "QuestionnaireResponse":
        raise OutcomeError(
            unprocessable("questionnaire-response must be a QuestionnaireResponse.", "resourceType")
        )
    own = _contained_questionnaire(response) if questionnaire is None else None
    try:
        # The contained form is checked by check_questionnaire below, which remembers the
        # forms it found valid: validating it again inside the response cost 6 of the 8 ms
        # an extraction of the demo's intake form took (bench.forms).
        QuestionnaireResponse.model_validate(response if own is None else _without(response, own))
    except ValidationError as exc:
        paths = [
            ".".join(str(p) for p in ("QuestionnaireResponse", *error["loc"]))
            for error in exc.errors()
        ]
        raise OutcomeError(
            unprocessable("The QuestionnaireResponse is not a valid R4 resource.", paths[:10])
        ) from exc
    form = questionnaire if questionnaire is not None else own
    answered = response.get("questionnaire")
    if form is None and forms is not None and isinstance(answered, str) and answered:
        form = forms.by_canonical(answered) if not answered.startswith("#") else None
    if form is None:
        raise OutcomeError(
            unprocessable(
                "The Questionnaire is not stored here (PUT /fhir/Questionnaire/<id>): send it "
                "in the questionnaire parameter, or contained in the QuestionnaireResponse.",
                "questionnaire",
            )
        )
    check_questionnaire(form)
    answered_url = _canonical_url(answered)
    declared = _canonical_url(form.get("url"))
    if questionnaire is not None and answered_url and declared and answered_url != declared:
        raise OutcomeError(
            unprocessable(
                "The QuestionnaireResponse answers another Questionnaire than the one sent.",
                "QuestionnaireResponse.questionnaire",
            )
        )
    return ExtractRequest(response, form)


def parse_extract_request(body: Any, forms: Forms | None = None) -> ExtractRequest:
    """Read the ``$extract`` input: 400 for a malformed request, 422 for a resource this
    server cannot extract from."""
    if isinstance(body, dict) and body.get("resourceType") == "QuestionnaireResponse":
        return check_response(body, None, forms)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise OutcomeError(
            bad_request(
                "The body must be a Parameters resource or a QuestionnaireResponse.",
                "resourceType",
            )
        )
    found: dict[str, dict[str, Any]] = {}
    parameters = body.get("parameter")
    for param in parameters if isinstance(parameters, list) else []:
        name = param.get("name") if isinstance(param, dict) else None
        if name not in ("questionnaire-response", "questionnaire"):
            continue
        if name in found or not isinstance(param.get("resource"), dict):
            raise OutcomeError(bad_request(f"{name} takes one resource.", name))
        found[name] = param["resource"]
    if "questionnaire-response" not in found:
        raise OutcomeError(
            bad_request(
                "Parameter questionnaire-response (a QuestionnaireResponse) is required.",
                "questionnaire-response",
            )
        )
    return check_response(found["questionnaire-response"], found.get("questionnaire"), forms)


# --- the element model -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Element:
    """One element of a FHIR type: its JSON name, whether it repeats, and its type (a
    primitive's name, ``Coding``…, or the model class of a complex or backbone type)."""

    name: str
    many: bool
    kind: str
    model: Any = None


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The element type inside ``Optional[List[...]]``, and whether it is a list."""
    many = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Union or origin is types.UnionType:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        elif origin is list:
            many = True
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, many


@lru_cache(maxsize=4096)
def element_of(model: Any, name: str) -> Element | None:
    """The element ``name`` of ``model`` (a ``fhir.resources`` class), or None."""
    info = model.model_fields.get(name)
    if info is None or not (info.json_schema_extra or {}).get("element_property"):
        return None
    inner, many = _unwrap(info.annotation)
    if typing.get_origin(inner) is typing.Annotated:
        primitive = typing.get_args(inner)[1]
        return Element(info.alias or name, many, type(primitive).__name__)
    if inner is bool:
        return Element(info.alias or name, many, "Boolean")
    type_name = getattr(inner, "__name__", "")
    if type_name.endswith("Type"):
        try:
            child = get_fhir_model_class(type_name[: -len("Type")])
        except (KeyError, ValueError):
            return None
        return Element(info.alias or name, many, type_name[: -len("Type")], child)
    return None


def resource_model(resource_type: str) -> Any:
    """The ``fhir.resources`` class of a resource type, or None."""
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return None
    return model if isinstance(model, type) and issubclass(model, Resource) else None


def _choice_element(model: Any, segment: str, answer_key: str | None) -> Element | None:
    base = segment.removesuffix("[x]")
    for type_name in _CHOICE_TYPES.get(answer_key or "", ()):
        found = element_of(model, base + type_name)
        if found is not None:
            return found
    return None


def answer_as(element: Element, key: str, value: Any) -> Any:
    """An answer (``valueX``) as a value of ``element``'s type; None when it does not fit."""
    kind = element.kind
    if key == "valueCoding" and isinstance(value, dict):
        if kind == "Coding":
            return value
        if kind == "CodeableConcept":
            concept: dict[str, Any] = {"coding": [value]}
            if isinstance(value.get("display"), str):
                concept["text"] = value["display"]
            return concept
        if kind in _CODE_KINDS:
            return value.get("code") if isinstance(value.get("code"), str) else None
        if kind in _TEXT_KINDS:
            text = value.get("display") or value.get("code")
            return text if isinstance(text, str) else None
        return None
    if key == "valueString" and isinstance(value, str):
        if kind in _TEXT_KINDS | _CODE_KINDS | _URI_KINDS:
            return value
        return {"text": value} if kind == "CodeableConcept" else None
    if key == "valueUri" and isinstance(value, str):
        return value if kind in _URI_KINDS | _TEXT_KINDS else None
    if key == "valueBoolean" and isinstance(value, bool):
        return value if kind == "Boolean" else None
    if key == "valueInteger" and isinstance(value, int) and not isinstance(value, bool):
        if kind in _INTEGER_KINDS or kind == "Decimal":
            return value
        return str(value) if kind in _TEXT_KINDS else None
    if key == "valueDecimal" and isinstance(value, (int, float)):
        return value if kind == "Decimal" else None
    if key == "valueDate" and isinstance(value, str):
        return value if kind in ("Date", "DateTime") else None
    if key == "valueDateTime" and isinstance(value, str):
        if kind == "DateTime" or (kind == "Instant" and "T" in value):
            return value
        return value[:10] if kind == "Date" else None
    if key == "valueTime" and isinstance(value, str):
        return value if kind == "Time" else None
    complex_keys = {
        "valueQuantity": "Quantity",
        "valueReference": "Reference",
        "valueAttachment": "Attachment",
    }
    if complex_keys.get(key) == kind and isinstance(value, dict):
        return value
    return None


def _parts(extension: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The sub-extensions of a complex extension by ``url`` (the first of each)."""
    parts: dict[str, dict[str, Any]] = {}
    for part in extension.get("extension") or []:
        if isinstance(part, dict) and isinstance(part.get("url"), str):
            parts.setdefault(part["url"], part)
    return parts


def _definition(parts: dict[str, dict[str, Any]]) -> str | None:
    """The ``definition`` part of ``definitionExtract`` (a canonical) or of
    ``definitionExtractValue`` (a uri)."""
    part = parts.get("definition") or {}
    value = part.get("valueCanonical") or part.get("valueUri")
    return value if isinstance(value, str) else None


def _answer(answer: Any) -> tuple[str, Any] | None:
    if not isinstance(answer, dict):
        return None
    for key, value in answer.items():
        if key.startswith("value"):
            return key, value
    return None


# --- building resources -----------------------------------------------------------------


@dataclass
class Built:
    """One extracted resource, with the Bundle entry fields its extraction set."""

    resource_type: str
    resource: dict[str, Any]
    full_url: str | None = None
    #: The ``linkId`` of the group that made it (None: the Questionnaire's root).
    link_id: str | None = None


@dataclass
class _Target:
    """Where definitions land: an element (``node``, at ``path``) of a resource."""

    built: Built
    canonical: str
    path: str
    node: dict[str, Any]
    model: Any


@dataclass
class _Fixed:
    """A ``definitionExtractValue``: an element path and its values."""

    path: str
    values: list[Any] = field(default_factory=list)


def _split(path: str) -> list[str]:
    return path.split(".")


class _Extraction(Expressions):
    def __init__(self, questionnaire: dict[str, Any], response: dict[str, Any]) -> None:
        super().__init__(questionnaire)
        self.response = response
        self.built: list[Built] = []
        self.variables: dict[str, Any] = {"resource": response}
        self.q_index: dict[str, dict[str, Any]] = {}
        stack = list(questionnaire.get("item") or [])
        while stack:
            item = stack.pop()
            if isinstance(item, dict) and isinstance(item.get("linkId"), str):
                self.q_index.setdefault(item["linkId"], item)
                stack.extend(item.get("item") or [])

    # -- contexts

    def allocate(self, element: dict[str, Any]) -> None:
        for extension in element.get("extension") or []:
            if isinstance(extension, dict) and extension.get("url") == ALLOCATE_ID:
                name = extension.get("valueString")
                if isinstance(name, str) and name.isidentifier():
                    self.variables[name] = f"urn:uuid:{uuid.uuid4()}"

    def context(
        self, element: dict[str, Any], focus: Any, link_id: str | None
    ) -> tuple[str, str, str | None] | None:
        """(resource type, canonical, fullUrl) of a resource ``element`` starts, if any."""
        found = find_extension(element, DEFINITION_EXTRACT)
        if found is not None:
            parts = _parts(found)
            canonical = _definition(parts)
            full_url = None
            if isinstance(parts.get("fullUrl", {}).get("valueString"), str):
                full_url = self.first(parts["fullUrl"]["valueString"], focus, link_id, "fullUrl")
            if not isinstance(canonical, str):
                self.warn(link_id, "definitionExtract has no definition.", "required")
                return None
            resource_type = self.type_of(canonical, element)
            if resource_type is None:
                self.warn(
                    link_id,
                    "definitionExtract names a profile whose resource type no item "
                    "definition gives.",
                    "not-supported",
                )
                return None
            return resource_type, canonical, full_url if isinstance(full_url, str) else None
        legacy = find_extension(element, ITEM_EXTRACTION_CONTEXT)
        if legacy is not None:
            code = legacy.get("valueCode")
            if isinstance(code, str) and resource_model(code) is not None:
                return code, BASE_DEFINITION + code, None
            self.warn(
                link_id,
                "itemExtractionContext is read only with a resource type (valueCode).",
                "not-supported",
            )
        self.unsupported(element, link_id)
        return None

    def unsupported(self, element: dict[str, Any], link_id: str | None) -> None:
        """Warn of the extraction mechanisms this server does not run."""
        for url in (OBSERVATION_EXTRACT, TEMPLATE_EXTRACT, TARGET_STRUCTURE_MAP):
            if find_extension(element, url) is not None:
                self.warn(
                    link_id,
                    "Only definition-based extraction is done here.",
                    "not-supported",
                )

    def type_of(self, canonical: str, element: dict[str, Any]) -> str | None:
        if canonical.startswith(BASE_DEFINITION):
            name = canonical[len(BASE_DEFINITION) :].partition("|")[0]
            return name if resource_model(name) is not None else None
        stack = list(element.get("item") or [])
        while stack:  # a profile: the type its items' definitions start with
            item = stack.pop()
            if not isinstance(item, dict):
                continue
            match = _DEFINITION.match(str(item.get("definition") or ""))
            if match and match.group("canonical") == canonical:
                name = match.group("path").split(".")[0]
                return name if resource_model(name) is not None else None
            stack.extend(item.get("item") or [])
        return None

    def start(self, spec: tuple[str, str, str | None], link_id: str | None) -> _Target | None:
        resource_type, canonical, full_url = spec
        if len(self.built) >= MAX_RESOURCES:
            self.warn(link_id, f"More than {MAX_RESOURCES} resources: the rest are left out.")
            return None
        resource: dict[str, Any] = {"resourceType": resource_type}
        if not canonical.startswith(BASE_DEFINITION):
            resource["meta"] = {"profile": [canonical]}
        built = Built(resource_type, resource, full_url, link_id)
        self.built.append(built)
        return _Target(built, canonical, resource_type, resource, resource_model(resource_type))

    # -- expressions

    def first(self, expression: str, focus: Any, link_id: str | None, what: str) -> Any:
        values = self.fhirpath(expression, self.variables, link_id, what, focus=focus)
        return values[0] if values else None

    def fixed_values(
        self, element: dict[str, Any], focus: Any, link_id: str | None
    ) -> list[_Fixed]:
        out: list[_Fixed] = []
        for extension in element.get("extension") or []:
            if not isinstance(extension, dict) or extension.get("url") != DEFINITION_EXTRACT_VALUE:
                continue
            parts = _parts(extension)
            definition, values = _definition(parts), None
            if "fixed-value" in parts:
                values = [v for k, v in parts["fixed-value"].items() if k.startswith("value")][:1]
            elif "expression" in parts:
                expression = parts["expression"].get("valueExpression") or {}
                if expression.get("language") != FHIRPATH:
                    self.warn(
                        link_id,
                        f"definitionExtractValue: only {FHIRPATH} is evaluated.",
                        "not-supported",
                    )
                    continue
                found = self.fhirpath(
                    str(expression.get("expression") or ""),
                    self.variables,
                    link_id,
                    "definitionExtractValue",
                    focus=focus,
                )
                values = [] if found is None else found
            match = _DEFINITION.match(str(definition or ""))
            if match is None:
                self.warn(link_id, "definitionExtractValue has no usable definition.", "invalid")
                continue
            if values:
                out.append(_Fixed(match.group("path"), list(values)))
        return out

    # -- placing values

    def relative(self, target: _Target, definition: Any, link_id: str | None) -> list[str] | None:
        """The segments of ``definition`` below ``target``, or None (with a warning)."""
        match = _DEFINITION.match(str(definition or ""))
        if match is None:
            self.warn(link_id, "The item's definition is not an element of a resource.", "invalid")
            return None
        path = match.group("path")
        if not path.startswith(target.path + "."):
            self.warn(
                link_id,
                f"The definition {path} is outside its extraction context ({target.path}).",
                "invalid",
            )
            return None
        return _split(path[len(target.path) + 1 :])

    def resolve(
        self, model: Any, segment: str, key: str | None, link_id: str | None
    ) -> Element | None:
        found = (
            _choice_element(model, segment, key)
            if segment.endswith("[x]")
            else element_of(model, segment)
        )
        if found is None:
            self.warn(link_id, f"{segment} is not an element this answer can fill.", "invalid")
        return found

    def descend(
        self,
        node: dict[str, Any],
        model: Any,
        segments: Sequence[str],
        link_id: str | None,
        fixed: Sequence[tuple[list[str], Any]] = (),
        leaf: str | None = None,
    ) -> tuple[dict[str, Any], Any] | None:
        """The object at ``segments`` below ``node``: a repeating element's last entry when
        the ``leaf`` below it is free and ``fixed`` values agree with it, else a new one."""
        for depth, segment in enumerate(segments):
            element = self.resolve(model, segment, None, link_id)
            if element is None or element.model is None:
                if element is not None:
                    self.warn(link_id, f"{segment} is not a complex element.", "invalid")
                return None
            rest = list(segments[depth + 1 :])
            if element.many:
                entries = node.setdefault(element.name, [])
                last = entries[-1] if entries else None
                if last is None or not _fits(last, element.model, rest, leaf, fixed):
                    last = {}
                    entries.append(last)
                node = last
            else:
                node = node.setdefault(element.name, {})
            model = element.model
            fixed = [(path[1:], value) for path, value in fixed if path[:1] == [segment]]
        return node, model

    def set_fixed(
        self,
        node: dict[str, Any],
        model: Any,
        base: str,
        fixed: Sequence[_Fixed],
        link_id: str | None,
    ) -> list[_Fixed]:
        """Set the fixed values under ``base`` (the path of ``node``); return the others."""
        others: list[_Fixed] = []
        for value in fixed:
            if not value.path.startswith(base + "."):
                others.append(value)
                continue
            segments = _split(value.path[len(base) + 1 :])
            placed = self.descend(node, model, segments[:-1], link_id, leaf=segments[-1])
            if placed is None:
                continue
            holder, holder_model = placed
            element = self.resolve(holder_model, segments[-1], None, link_id)
            if element is None:
                continue
            if element.many:
                existing = holder.setdefault(element.name, [])
                existing.extend(v for v in value.values if v not in existing)
            else:
                holder[element.name] = value.values[0]
        return others

    # -- the walk

    def run(self) -> list[Built]:
        self.allocate(self.questionnaire)
        root: _Target | None = None
        spec = self.context(self.questionnaire, self.response, None)
        if spec is not None:
            root = self.start(spec, None)
            if root is not None:
                fixed = self.fixed_values(self.questionnaire, self.response, None)
                self.set_fixed(root.node, root.model, root.path, fixed, None)
        self.walk(self.questionnaire.get("item") or [], self.response.get("item") or [], root)
        return self.built

    def walk(self, q_items: Sequence[Any], r_items: Sequence[Any], target: _Target | None) -> None:
        by_link = {i.get("linkId"): i for i in q_items if isinstance(i, dict)}
        for r_item in r_items:
            if not isinstance(r_item, dict):
                continue
            link_id = r_item.get("linkId")
            q_item = by_link.get(link_id) or self.q_index.get(str(link_id))
            if q_item is None:
                self.warn(str(link_id), "The response has an item the Questionnaire does not.")
                continue
            if q_item.get("type") == "group":
                self.group(q_item, r_item, target)
            elif q_item.get("type") != "display":
                self.question(q_item, r_item, target)

    def group(self, q_item: dict[str, Any], r_item: dict[str, Any], target: _Target | None) -> None:
        link_id = q_item.get("linkId")
        self.allocate(q_item)
        spec = self.context(q_item, r_item, link_id)
        fixed = self.fixed_values(q_item, r_item, link_id)
        if spec is not None:
            target = self.start(spec, link_id)
            if target is None:
                return
            fixed = self.set_fixed(target.node, target.model, target.path, fixed, link_id)
        elif target is not None and q_item.get("definition"):
            segments = self.relative(target, q_item["definition"], link_id)
            if segments is None:
                return
            placed = self.descend(target.node, target.model, segments[:-1], link_id)
            if placed is None:
                return
            holder, holder_model = placed
            element = self.resolve(holder_model, segments[-1], None, link_id)
            if element is None or element.model is None:
                return
            node: dict[str, Any] = {}
            if element.many:
                holder.setdefault(element.name, []).append(node)
            else:
                node = holder.setdefault(element.name, {})
            path = f"{target.path}.{'.'.join(segments)}"
            target = _Target(target.built, target.canonical, path, node, element.model)
            fixed = self.set_fixed(node, element.model, path, fixed, link_id)
        if target is not None and fixed:
            self.set_fixed(target.node, target.model, target.path, fixed, link_id)
        self.walk(q_item.get("item") or [], r_item.get("item") or [], target)

    def question(
        self, q_item: dict[str, Any], r_item: dict[str, Any], target: _Target | None
    ) -> None:
        answers = [a for a in r_item.get("answer") or [] if isinstance(a, dict)]
        if answers:
            self.unsupported(q_item, q_item.get("linkId"))
        if target is not None and q_item.get("definition") and answers:
            self.answer(q_item, r_item, target, answers)
        for answer in answers:  # questions nested under an answer
            if answer.get("item"):
                self.walk(q_item.get("item") or [], answer["item"], target)
        if r_item.get("item"):
            self.walk(q_item.get("item") or [], r_item["item"], target)

    def answer(
        self,
        q_item: dict[str, Any],
        r_item: dict[str, Any],
        target: _Target,
        answers: Sequence[dict[str, Any]],
    ) -> None:
        link_id = q_item.get("linkId")
        segments = self.relative(target, q_item["definition"], link_id)
        if segments is None:
            return
        carrier_path = ".".join([target.path, *segments[:-1]])
        fixed = self.fixed_values(q_item, r_item, link_id)
        own = [
            (_split(f.path[len(carrier_path) + 1 :]), f.values[0])
            for f in fixed
            if f.path.startswith(carrier_path + ".")
        ]
        for answer in answers:
            found = _answer(answer)
            if found is None:
                continue
            key, value = found
            placed = self.descend(
                target.node, target.model, segments[:-1], link_id, own, segments[-1]
            )
            if placed is None:
                return
            holder, holder_model = placed
            element = (
                _choice_element(holder_model, segments[-1], key)
                if segments[-1].endswith("[x]")
                else element_of(holder_model, segments[-1])
            )
            if element is None:
                self.warn(
                    link_id,
                    f"{'.'.join([target.path, *segments])} is not an element of "
                    f"{target.built.resource_type}.",
                    "invalid",
                )
                return
            converted = answer_as(element, key, value)
            if converted is None:
                self.warn(
                    link_id,
                    f"An answer ({key}) does not fit {'.'.join([target.path, *segments])}.",
                    "value",
                )
                continue
            if element.many:
                holder.setdefault(element.name, []).append(converted)
            elif element.name in holder:
                self.warn(
                    link_id,
                    f"{'.'.join([target.path, *segments])} takes one value: the first is kept.",
                    "value",
                )
                continue
            else:
                holder[element.name] = converted
            self.set_fixed(holder, holder_model, carrier_path, fixed, link_id)


def _fits(
    entry: dict[str, Any],
    model: Any,
    rest: Sequence[str],
    leaf: str | None,
    fixed: Sequence[tuple[list[str], Any]],
) -> bool:
    """Whether a value at ``rest + [leaf]`` below ``entry`` fits without replacing one,
    and each fixed value (path below ``entry``) is absent or the same."""
    if leaf is None:
        return False  # a new group element is always a new entry
    node: Any = entry
    current = model
    for segment in rest:
        element = element_of(current, segment)
        if element is None or not isinstance(node, dict):
            return False
        child = node.get(element.name)
        if child is None:
            break
        node = child[-1] if element.many and child else child
        current = element.model
    else:
        element = element_of(current, leaf) if not leaf.endswith("[x]") else None
        if element is not None and not element.many and element.name in node:
            return False
        if element is None and any(k.startswith(leaf[:-3]) for k in node):
            return False
    return all(_value_at(entry, model, path) in (None, value) for path, value in fixed)


def _value_at(node: Any, model: Any, path: Sequence[str]) -> Any:
    for segment in path:
        element = element_of(model, segment)
        if element is None or not isinstance(node, dict):
            return None
        node = node.get(element.name)
        if isinstance(node, list):
            node = node[-1] if node else None
        model = element.model
    return node


def _clean(value: Any) -> Any:
    """``value`` without empty objects and lists (a group nobody answered)."""
    if isinstance(value, dict):
        return {k: c for k, v in value.items() if (c := _clean(v)) not in ({}, [], None)}
    if isinstance(value, list):
        return [c for v in value if (c := _clean(v)) not in ({}, [], None)]
    return value


# --- the operation -------------------------------------------------------------------------


@dataclass
class Extracted:
    """What a form gave: the resources (valid or not) and the warnings."""

    resources: list[Built]
    issues: list[dict[str, Any]]
    invalid: dict[int, list[str]] = field(default_factory=dict)

    def of_type(self, resource_type: str) -> Iterator[Built]:
        return (b for b in self.resources if b.resource_type == resource_type)


def extract_resources(request: ExtractRequest) -> Extracted:
    """Run definition-based extraction; each resource is validated with ``fhir.resources``
    (an invalid one is kept, with an ``invalid`` warning naming its paths)."""
    status = request.response.get("status")
    extraction = _Extraction(request.questionnaire, request.response)
    if status not in EXTRACTABLE_STATUSES:
        extraction.warn(
            None,
            f"The QuestionnaireResponse is {status}: extraction is meant for a completed one.",
            "incomplete",
        )
    built = extraction.run()
    if not built:
        extraction.warn(
            None,
            "The Questionnaire declares no definition-based extraction "
            "(sdc-questionnaire-definitionExtract).",
            "not-found",
        )
    out = Extracted(built, extraction.issues)
    for position, resource in enumerate(built):
        resource.resource = _clean(resource.resource)
        try:
            get_fhir_model_class(resource.resource_type).model_validate(resource.resource)
        except ValidationError as exc:
            paths = sorted(
                {
                    ".".join(str(p) for p in (resource.resource_type, *error["loc"]))
                    for error in exc.errors()
                }
            )
            out.invalid[position] = paths
            out.issues.append(
                issue(
                    "invalid",
                    f"The extracted {resource.resource_type} is not valid: it was left out.",
                    severity="warning",
                    expression=paths[:10],
                )
            )
    return out


def transaction(resources: Sequence[Built]) -> dict[str, Any]:
    """The extracted resources as a transaction Bundle (POST, or PUT where an id was given)."""
    entries = []
    for built in resources:
        resource = built.resource
        entry: dict[str, Any] = {
            "fullUrl": built.full_url or f"urn:uuid:{uuid.uuid4()}",
            "resource": resource,
        }
        resource_id = resource.get("id")
        if isinstance(resource_id, str) and resource_id:
            entry["request"] = {"method": "PUT", "url": f"{built.resource_type}/{resource_id}"}
        else:
            entry["request"] = {"method": "POST", "url": built.resource_type}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def extract(body: Any, forms: Forms | None = None) -> dict[str, Any]:
    """Run ``$extract``: the output Parameters (``return`` and, if any, ``issues``)."""
    extracted = extract_resources(parse_extract_request(body, forms))
    valid = [b for i, b in enumerate(extracted.resources) if i not in extracted.invalid]
    parameters: list[dict[str, Any]] = [{"name": "return", "resource": transaction(valid)}]
    if extracted.issues:
        parameters.append({"name": "issues", "resource": operation_outcome(extracted.issues)})
    return {"resourceType": "Parameters", "parameter": parameters}


__all__ = [
    "ExtractRequest",
    "Extracted",
    "check_response",
    "extract",
    "extract_resources",
    "parse_extract_request",
    "transaction",
]
