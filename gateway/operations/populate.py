"""SDC ``Questionnaire/$populate``: a QuestionnaireResponse pre-filled from the golden record.

https://hl7.org/fhir/uv/sdc/OperationDefinition-Questionnaire-populate.html (SDC 3.0.0).
This is how "ask once" reaches a portal's intake form: the portal sends its
Questionnaire and the patient's golden id, and gets back a QuestionnaireResponse
whose answers are what the connected EHRs already know, for the patient to review.

Input: a ``Parameters`` resource with

- ``questionnaire``: the Questionnaire itself; or ``canonical`` / ``questionnaireRef``,
  naming one stored on this server (``PUT /fhir/Questionnaire/{id}``). A form that is not
  stored here is a 422: a URL a client names is never fetched (that would let any caller
  make the server issue requests), and ``identifier`` is not resolved;
- ``subject``: ``Patient/<golden id>`` (relative, or absolute on this server's base);
- ``local`` (default true): false leaves the golden record unread, so only the
  ``context`` resources and the Questionnaire's own ``initial`` values fill answers;
- ``context`` (``name`` + ``content``): resources bound to launch-context names, a
  Patient named by reference on this server, or any resource given inline.

Population, per item (https://hl7.org/fhir/uv/sdc/populate.html):

- **expression-based**: ``sdc-questionnaire-initialExpression`` (FHIRPath, through the
  ``fhirpathpy`` library, the R4 model) over the launch context: ``%patient`` is the
  golden Patient, and every name the Questionnaire's ``sdc-questionnaire-launchContext``
  declares is bound from ``context``; ``variable`` extensions on the root and on items
  are in scope for the item and its descendants: FHIRPath, or an ``x-fhir-query`` run by
  this server's own Patient and Encounter searches (:class:`Searcher`); a group's
  ``sdc-questionnaire-itemPopulationContext`` gives one repetition of the group per
  value it finds, with the value bound to its name;
- **definition-based**: an item whose ``definition`` is an element of Patient
  (``…/StructureDefinition/Patient#Patient.birthDate``) is answered from the golden
  Patient;
- an item's ``initial`` values, where nothing else answered it.

Answers are converted to the item's type (a ``choice`` answer is the matching
``answerOption``'s coding). What cannot be used (an expression in another language, a
search the caller's scopes do not allow, a value of the wrong type, several values for
a non-repeating item) leaves the item unanswered and adds a warning to the ``issues``
OperationOutcome. The warnings name the item's ``linkId`` and never quote a value.
The output is a ``Parameters`` resource with ``response`` (status ``in-progress``, for
the patient to review and complete, as the operation's comment asks) and, when there
are any, ``issues``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, quote

import orjson
from fhir.resources.R4B.questionnaire import Questionnaire
from pydantic import ValidationError
from sqlalchemy.orm import Session

from gateway.operations.encounters import search_encounters
from gateway.operations.includes import other_types
from gateway.operations.read import check_id, read_patient, survivor_of
from gateway.operations.search_patient import SearchContext, search_patients
from gateway.outcomes import (
    OutcomeError,
    bad_request,
    issue,
    operation_outcome,
    unprocessable,
)

if TYPE_CHECKING:
    from gateway.operations.fhirpath import Budget

SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition/"
INITIAL_EXPRESSION = SDC + "sdc-questionnaire-initialExpression"
LAUNCH_CONTEXT = SDC + "sdc-questionnaire-launchContext"
ITEM_POPULATION_CONTEXT = SDC + "sdc-questionnaire-itemPopulationContext"
VARIABLE = "http://hl7.org/fhir/StructureDefinition/variable"
FHIRPATH = "text/fhirpath"
FHIR_QUERY = "application/x-fhir-query"
#: What an ``x-fhir-query`` may search: the types this server holds.
QUERY_TYPES = ("Patient", "Encounter")
#: The most ``x-fhir-query`` searches one request runs (a variable on an item inside a
#: repeating group runs once per repetition).
MAX_QUERIES = 20
#: An embedded FHIRPath expression in an ``x-fhir-query``.
_EMBEDDED = re.compile(r"\{\{(.+?)\}\}")
#: ``definition`` of a Patient element: the StructureDefinition (base or profile) and a
#: plain element path (no slices).
_PATIENT_DEFINITION = re.compile(r"^[^#]+#(Patient(?:\.[A-Za-z]+(?:\[x\])?)+)$")
#: The most items (at every level) a Questionnaire may have, and the deepest nesting.
MAX_ITEMS = 2000
MAX_DEPTH = 30
#: The most repetitions a population context gives one group.
MAX_REPETITIONS = 100
#: Digests of Questionnaires found valid (see :func:`check_questionnaire`), cleared as a
#: whole when full.
_VALID_QUESTIONNAIRES: set[bytes] = set()
MAX_REMEMBERED_QUESTIONNAIRES = 1024
#: A FHIR date or dateTime, of any precision.
_DATE_TIME = re.compile(
    r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_TIME = re.compile(r"^\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")

Values = list[Any]


@dataclass(frozen=True, slots=True)
class PopulateRequest:
    questionnaire: dict[str, Any]
    #: The golden id of ``subject``.
    subject: str
    local: bool
    #: Launch-context name -> the resources given for it in ``context`` (inline ones),
    #: or the golden ids of the Patients named there by reference.
    contexts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    context_patients: dict[str, list[str]] = field(default_factory=dict)


# --- the request -----------------------------------------------------------------------


def subject_id(reference: Any, base: str, parameter: str = "subject") -> str:
    """The golden id of a reference to a Patient of this server (relative or absolute)."""
    value = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(value, str) or not value:
        raise OutcomeError(bad_request(f"{parameter} takes valueReference.reference.", parameter))
    local = value.removeprefix(f"{base}/fhir/")
    kind, _, golden_id = local.partition("/")
    if kind != "Patient" or not golden_id or "/" in golden_id:
        raise OutcomeError(
            unprocessable(f"{parameter} must reference a Patient of this server.", parameter)
        )
    check_id("Patient", golden_id)
    return golden_id


def _list(value: Any) -> list[Any]:
    """A JSON array of the request, or nothing (a malformed one is no parameter at all)."""
    return value if isinstance(value, list) else []


def _context_part(
    part_list: Sequence[Any], base: str
) -> tuple[str, dict[str, Any] | None, str | None]:
    name, resource, patient = None, None, None
    for part in part_list:
        if not isinstance(part, dict):
            continue
        if part.get("name") == "name":
            name = part.get("valueString")
        elif part.get("name") == "content":
            if isinstance(part.get("resource"), dict):
                resource = part["resource"]
            elif isinstance(part.get("valueReference"), dict):
                patient = subject_id(part["valueReference"], base, "context")
    if not isinstance(name, str) or not name.isidentifier():
        raise OutcomeError(bad_request("context takes a name part (a variable name).", "context"))
    if resource is None and patient is None:
        raise OutcomeError(
            bad_request("context takes a content part: a resource, or a reference.", "context")
        )
    return name, resource, patient


class Forms(Protocol):
    """The Questionnaires this server keeps (``questionnaires.StoredForms``)."""

    def by_canonical(self, canonical: str) -> dict[str, Any] | None: ...
    def by_id(self, questionnaire_id: str) -> dict[str, Any] | None: ...


def _stored_form(
    name: str, param: dict[str, Any], base: str, forms: Forms | None
) -> dict[str, Any]:
    """The stored Questionnaire ``canonical`` or ``questionnaireRef`` names; 422 when none
    is stored (a URL is never fetched: any caller could make the server send requests)."""
    found = None
    if name == "canonical" and forms is not None:
        value = param.get("valueCanonical") or param.get("valueUri")
        if not isinstance(value, str) or not value:
            raise OutcomeError(bad_request("canonical takes valueCanonical.", name))
        found = forms.by_canonical(value)
    elif name == "questionnaireRef" and forms is not None:
        reference = (param.get("valueReference") or {}).get("reference")
        local = str(reference or "").removeprefix(f"{base}/fhir/")
        kind, _, questionnaire_id = local.partition("/")
        if kind != "Questionnaire" or not questionnaire_id or "/" in questionnaire_id:
            raise OutcomeError(
                bad_request("questionnaireRef takes a reference to Questionnaire/<id>.", name)
            )
        found = forms.by_id(questionnaire_id)
    if found is None:
        raise OutcomeError(
            unprocessable(
                f"No Questionnaire stored here matches {name}: store it first "
                "(PUT /fhir/Questionnaire/<id>), or send it in the questionnaire parameter.",
                name,
            )
        )
    return found


def parse_populate_request(body: Any, base: str, forms: Forms | None = None) -> PopulateRequest:
    """Read the ``$populate`` input: 400 for a malformed parameter, 422 for one this server
    cannot act on."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise OutcomeError(bad_request("The body must be a Parameters resource.", "Parameters"))
    questionnaire: dict[str, Any] | None = None
    subject: str | None = None
    local = True
    contexts: dict[str, list[dict[str, Any]]] = {}
    context_patients: dict[str, list[str]] = {}
    for param in _list(body.get("parameter")):
        name = param.get("name") if isinstance(param, dict) else None
        if name == "questionnaire":
            if questionnaire is not None or not isinstance(param.get("resource"), dict):
                raise OutcomeError(
                    bad_request("questionnaire takes one Questionnaire resource.", name)
                )
            questionnaire = param["resource"]
        elif name in ("canonical", "questionnaireRef", "identifier"):
            if questionnaire is not None:
                raise OutcomeError(bad_request("Name the Questionnaire once.", name))
            questionnaire = _stored_form(name, param, base, forms)
        elif name == "subject":
            if subject is not None:
                raise OutcomeError(bad_request("subject is given more than once.", name))
            subject = subject_id(param.get("valueReference"), base)
        elif name == "local":
            if not isinstance(param.get("valueBoolean"), bool):
                raise OutcomeError(bad_request("local takes valueBoolean.", name))
            local = param["valueBoolean"]
        elif name == "context":
            key, resource, patient = _context_part(_list(param.get("part")), base)
            if resource is not None:
                contexts.setdefault(key, []).append(resource)
            if patient is not None:
                context_patients.setdefault(key, []).append(patient)
    if questionnaire is None:
        raise OutcomeError(
            bad_request(
                "The questionnaire parameter (a Questionnaire) is required.", "questionnaire"
            )
        )
    if subject is None:
        raise OutcomeError(bad_request("The subject parameter is required.", "subject"))
    check_questionnaire(questionnaire)
    return PopulateRequest(questionnaire, subject, local, contexts, context_patients)


def check_questionnaire(questionnaire: dict[str, Any]) -> None:
    """422 unless ``questionnaire`` is a valid R4 Questionnaire this operation can walk.

    A portal sends the same form for patient after patient: a Questionnaire found valid
    is remembered by its digest (:data:`_VALID_QUESTIONNAIRES`), so that its validation,
    which cost more than populating it (3.5 ms against 2.8 ms for the demo's intake
    form), runs once per form, not once per request."""
    try:
        digest = hashlib.sha256(orjson.dumps(questionnaire, option=orjson.OPT_SORT_KEYS)).digest()
    except (TypeError, orjson.JSONEncodeError):  # beyond orjson (an int over 64 bits…)
        digest = None
    if digest is not None and digest in _VALID_QUESTIONNAIRES:
        return
    _validate_questionnaire(questionnaire)
    if digest is not None:
        if len(_VALID_QUESTIONNAIRES) >= MAX_REMEMBERED_QUESTIONNAIRES:
            _VALID_QUESTIONNAIRES.clear()
        _VALID_QUESTIONNAIRES.add(digest)


def _validate_questionnaire(questionnaire: dict[str, Any]) -> None:
    if questionnaire.get("resourceType") != "Questionnaire":
        raise OutcomeError(unprocessable("questionnaire must be a Questionnaire.", "questionnaire"))
    count = 0
    stack: list[tuple[Any, int]] = [(questionnaire.get("item") or [], 1)]
    while stack:
        items, depth = stack.pop()
        if not isinstance(items, list):
            continue
        if depth > MAX_DEPTH:
            raise OutcomeError(
                unprocessable(f"Items are nested deeper than {MAX_DEPTH} levels.", "item")
            )
        count += len(items)
        if count > MAX_ITEMS:
            raise OutcomeError(unprocessable(f"More than {MAX_ITEMS} items.", "item"))
        stack.extend((i.get("item") or [], depth + 1) for i in items if isinstance(i, dict))
    try:
        Questionnaire.model_validate(questionnaire)
    except ValidationError as exc:
        paths = [
            ".".join(str(p) for p in ("Questionnaire", *error["loc"])) for error in exc.errors()
        ]
        raise OutcomeError(
            unprocessable("questionnaire is not a valid R4 Questionnaire.", paths[:10])
        ) from exc
    subject_types = questionnaire.get("subjectType")
    if subject_types and "Patient" not in subject_types:
        raise OutcomeError(
            unprocessable(
                "The Questionnaire's subjectType does not include Patient.", "subjectType"
            )
        )


# --- population ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchLimits:
    """What an ``x-fhir-query`` may do for this caller: its scopes' verdict on searching a
    type, and the deployment's paging bounds and cursor secret."""

    allows: Callable[[str, str], bool]
    secret: str
    default_count: int
    max_count: int


class Searcher:
    """Runs an ``x-fhir-query`` through this server's own searches, in the request's
    session, and notes the golden ids whose data the answer holds (for the audit)."""

    def __init__(
        self, session: Session, base: str, limits: SearchLimits, disclosed: list[str]
    ) -> None:
        self.session, self.base, self.limits, self.disclosed = session, base, limits, disclosed
        #: Searches run so far (at most :data:`MAX_QUERIES` a request).
        self.runs = 0

    def allows(self, resource_type: str) -> bool:
        return self.limits.allows(resource_type, "s")

    def search(self, resource_type: str, items: Sequence[tuple[str, str]]) -> dict[str, Any]:
        self.runs += 1
        limits = self.limits
        if resource_type == "Patient":
            context = SearchContext(
                self.base, limits.secret, True, limits.default_count, limits.max_count
            )
            bundle = search_patients(self.session, items, context)
        else:
            bundle = search_encounters(
                self.session,
                items,
                base=self.base,
                secret=limits.secret,
                strict=True,
                default_count=limits.default_count,
                max_count=limits.max_count,
            )
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") or {}
            if resource.get("resourceType") == "Patient":
                self.disclosed.append(str(resource.get("id")))
            reference = (resource.get("subject") or {}).get("reference") or ""
            if reference.startswith("Patient/"):
                self.disclosed.append(reference.removeprefix("Patient/"))
        return bundle


def _fhirpath() -> ModuleType:
    """:mod:`gateway.operations.fhirpath`, imported on first use (its docstring says why)."""
    from gateway.operations import fhirpath

    return fhirpath


class Expressions:
    """FHIRPath over a Questionnaire's expressions, on one request's budget, with the
    warnings of what could not be used (shared by ``$populate`` and ``$extract``)."""

    def __init__(self, questionnaire: dict[str, Any]) -> None:
        self.questionnaire = questionnaire
        #: The request's FHIRPath budget, made with the first expression evaluated.
        self.budget: Budget | None = None
        self.issues: list[dict[str, Any]] = []

    def warn(self, link_id: str | None, diagnostics: str, code: str = "processing") -> None:
        where = f"Questionnaire.item.where(linkId = '{link_id}')" if link_id else "Questionnaire"
        self.issues.append(issue(code, diagnostics, severity="warning", expression=where))

    def fhirpath(
        self,
        expression: str,
        variables: Mapping[str, Any],
        link_id: str | None,
        what: str,
        focus: Any = None,
    ) -> Values | None:
        """Values of a FHIRPath expression over ``focus`` (the Questionnaire by default)
        with ``variables`` (None, with a warning, when it cannot be used)."""
        fhirpath = _fhirpath()
        try:
            run = fhirpath.compile_expression(expression)
        except fhirpath.UnsupportedFunctionError as exc:
            self.warn(link_id, f"{what}: {exc}.", "not-supported")
            return None
        except fhirpath.ExpressionError as exc:
            self.warn(link_id, f"{what} does not parse ({exc}).", "invalid")
            return None
        except Exception as exc:  # the parser's own failure (a recursion too deep…)
            self.warn(link_id, f"{what} does not parse ({type(exc).__name__}).", "invalid")
            return None
        if self.budget is None:
            self.budget = fhirpath.Budget()
        try:
            return run(self.questionnaire if focus is None else focus, variables, self.budget)
        except fhirpath.BudgetExceededError as exc:
            self.warn(link_id, f"{what} was stopped: {exc}.", "too-costly")
            return None
        except Exception as exc:  # an evaluation error names the expression's fault only
            self.warn(link_id, f"{what} failed to evaluate ({type(exc).__name__}).")
            return None


class _Population(Expressions):
    """One QuestionnaireResponse being built: the variables in scope and the warnings."""

    def __init__(
        self,
        questionnaire: dict[str, Any],
        variables: dict[str, Any],
        searcher: Searcher | None = None,
    ) -> None:
        super().__init__(questionnaire)
        self.searcher = searcher
        self.patient: dict[str, Any] | None = variables.get("patient")
        self.variables = variables

    def evaluate(
        self, value: Any, variables: Mapping[str, Any], link_id: str | None, what: str
    ) -> Values | None:
        """Values of a ``valueExpression`` (None, with a warning, when it cannot be used)."""
        if not isinstance(value, dict) or not isinstance(value.get("expression"), str):
            self.warn(link_id, f"{what} has no expression.")
            return None
        if value.get("language") == FHIR_QUERY:
            return self.query(value["expression"], variables, link_id, what)
        if value.get("language") != FHIRPATH:
            self.warn(
                link_id,
                f"{what}: only {FHIRPATH} and {FHIR_QUERY} expressions are evaluated.",
                "not-supported",
            )
            return None
        return self.fhirpath(value["expression"], variables, link_id, what)

    def query(
        self, text: str, variables: Mapping[str, Any], link_id: str | None, what: str
    ) -> Values | None:
        """An ``x-fhir-query`` (https://hl7.org/fhir/uv/sdc/expressions.html#x-fhir-query-enhancements)
        run by this server's own Patient or Encounter search: one searchset Bundle.

        Each ``{{expression}}`` is replaced by the first value of its FHIRPath, URL-encoded.
        One that finds nothing (no patient in context) leaves the query unrun and the
        value empty: run without the value, ``Encounter?patient=`` would widen to every
        patient's encounters. The search is strict (an unknown parameter is an error,
        never ignored) and needs the caller's search scope on the type."""
        if self.searcher is None:
            self.warn(link_id, f"{what}: {FHIR_QUERY} is not available here.", "not-supported")
            return None
        parts: list[str] = []
        position = 0
        for match in _EMBEDDED.finditer(text):
            found = self.fhirpath(match.group(1), variables, link_id, what)
            if found is None:
                return None
            if not found or found[0] in ("", None) or isinstance(found[0], dict | list):
                return []
            value = found[0]
            value = str(value).lower() if isinstance(value, bool) else str(value)
            parts.extend((text[position : match.start()], quote(value, safe="")))
            position = match.end()
        parts.append(text[position:])
        rtype, _, query = "".join(parts).partition("?")
        if rtype not in QUERY_TYPES:
            self.warn(
                link_id,
                f"{what}: {FHIR_QUERY} searches only {' and '.join(QUERY_TYPES)} here.",
                "not-supported",
            )
            return None
        if self.searcher.runs >= MAX_QUERIES:
            self.warn(
                link_id, f"{what}: more than {MAX_QUERIES} {FHIR_QUERY} searches.", "too-costly"
            )
            return None
        items = parse_qsl(query, keep_blank_values=True)
        # The other types it reads (includes, chains, _has) need the caller's scopes too.
        for needed in (rtype, *other_types(rtype, items)):
            if not self.searcher.allows(needed):
                self.warn(
                    link_id,
                    f"{what}: searching {needed} needs the scope system/{needed}.s.",
                    "forbidden",
                )
                return None
        try:
            bundle = self.searcher.search(rtype, items)
        except OutcomeError as exc:  # its diagnostics name parameters, never values
            self.warn(link_id, f"{what}: {exc.outcome.diagnostics}", "invalid")
            return None
        return [bundle]

    def scope(self, element: dict[str, Any], variables: dict[str, Any]) -> dict[str, Any]:
        """``variables`` plus the ``variable`` extensions declared on ``element``, in order."""
        declared = [e for e in element.get("extension") or [] if e.get("url") == VARIABLE]
        if not declared:
            return variables
        scoped = dict(variables)
        for extension in declared:
            value = extension.get("valueExpression") or {}
            name = value.get("name")
            if not isinstance(name, str) or not name.isidentifier():
                self.warn(element.get("linkId"), "A variable has no usable name.")
                continue
            found = self.evaluate(value, scoped, element.get("linkId"), f"Variable {name}")
            scoped[name] = found if found is not None else []
        return scoped

    # --- items ---------------------------------------------------------------------

    def items(
        self, items: Sequence[dict[str, Any]], variables: dict[str, Any]
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in items:
            scoped = self.scope(item, variables)
            if item.get("type") == "group":
                out.extend(self.group(item, scoped))
            else:
                out.append(self.question(item, scoped))
        return out

    def group(self, item: dict[str, Any], variables: dict[str, Any]) -> list[dict[str, Any]]:
        context = find_extension(item, ITEM_POPULATION_CONTEXT)
        if context is None:
            return [self._response_item(item, self.items(item.get("item") or [], variables))]
        value = context.get("valueExpression") or {}
        name = value.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            self.warn(item.get("linkId"), "itemPopulationContext has no usable name.")
            name = None
        found = self.evaluate(value, variables, item.get("linkId"), "itemPopulationContext")
        if not found:
            # One repetition, unanswered: the name is an empty collection, so that the
            # items using it find nothing (a patient without an address) without failing.
            scoped = {**variables, name: []} if name else variables
            return [self._response_item(item, self.items(item.get("item") or [], scoped))]
        if not item.get("repeats") and len(found) > 1:
            self.warn(
                item.get("linkId"),
                "itemPopulationContext found several values for a group that does not "
                "repeat: the first one is used.",
            )
            found = found[:1]
        if len(found) > MAX_REPETITIONS:
            self.warn(
                item.get("linkId"), f"Only the first {MAX_REPETITIONS} repetitions are given."
            )
            found = found[:MAX_REPETITIONS]
        out = []
        for element in found:
            scoped = {**variables, name: [element]} if name else variables
            out.append(self._response_item(item, self.items(item.get("item") or [], scoped)))
        return out

    def question(self, item: dict[str, Any], variables: dict[str, Any]) -> dict[str, Any]:
        link_id = item.get("linkId")
        kind = item.get("type")
        answers: list[dict[str, Any]] = []
        if kind != "display":
            # An empty string is no value (``join`` of nothing, a blank element).
            values = [v for v in self._values(item, variables) or [] if v != ""]
            if values:
                if not item.get("repeats") and len(values) > 1:
                    self.warn(
                        link_id,
                        "Several values were found for an item that does not repeat: "
                        "the first one is used.",
                    )
                    values = values[:1]
                for value in values:
                    answer = answer_value(kind, value, item.get("answerOption") or [])
                    if answer is None:
                        self.warn(link_id, f"A value found does not fit an item of type {kind}.")
                        continue
                    answers.append(answer)
            if not answers:
                answers = [dict(i) for i in item.get("initial") or [] if isinstance(i, dict)]
                if not answers:
                    answers = [
                        _option_answer(o)
                        for o in item.get("answerOption") or []
                        if o.get("initialSelected")
                    ]
        children = self.items(item.get("item") or [], variables)
        response = self._response_item(item, [])
        if answers:
            if children:  # nested questions sit under the answer (qrs-1)
                answers[0] = {**answers[0], "item": children}
            response["answer"] = answers
        elif children:
            response["item"] = children
        return response

    def _values(self, item: dict[str, Any], variables: dict[str, Any]) -> Values | None:
        link_id = item.get("linkId")
        initial = find_extension(item, INITIAL_EXPRESSION)
        if initial is not None:
            return self.evaluate(
                initial.get("valueExpression"), variables, link_id, "initialExpression"
            )
        definition = item.get("definition")
        if isinstance(definition, str) and self.patient is not None:
            match = _PATIENT_DEFINITION.match(definition)
            if match is not None:
                path = match.group(1).replace("[x]", "")
                return self.fhirpath(path, {}, link_id, "definition", focus=self.patient)
        return None

    @staticmethod
    def _response_item(item: dict[str, Any], children: list[dict[str, Any]]) -> dict[str, Any]:
        response: dict[str, Any] = {"linkId": item.get("linkId")}
        for key in ("definition", "text"):
            if item.get(key) is not None:
                response[key] = item[key]
        if children:
            response["item"] = children
        return response


def find_extension(element: dict[str, Any], url: str) -> dict[str, Any] | None:
    for extension in element.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == url:
            return extension
    return None


# --- answers ---------------------------------------------------------------------------


def _option_answer(option: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in option.items() if k.startswith("value")}


def _coding_key(coding: dict[str, Any]) -> tuple[Any, Any]:
    return coding.get("system"), coding.get("code")


def _choice(
    value: Any, options: Sequence[dict[str, Any]], open_choice: bool
) -> dict[str, Any] | None:
    """A choice answer: the ``answerOption`` the value names (by coding, or by code, text
    or number), else (``open-choice``, or no options) the value itself."""
    codings: list[Any] = []
    if isinstance(value, dict):  # a CodeableConcept's codings, or a Coding
        codings = list(value.get("coding") or []) if "coding" in value else [value]
    for coding in codings:
        if not isinstance(coding, dict) or not coding.get("code"):
            continue
        for option in options:
            offered = option.get("valueCoding")
            if not isinstance(offered, dict):
                continue
            same_code = offered.get("code") == coding.get("code")
            if same_code and (
                coding.get("system") is None or _coding_key(offered) == _coding_key(coding)
            ):
                return {"valueCoding": offered}
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        for option in options:
            offered = option.get("valueCoding")
            if isinstance(offered, dict) and offered.get("code") == value:
                return {"valueCoding": offered}
            for key in ("valueString", "valueInteger", "valueDate", "valueTime"):
                if key in option and option[key] == value:
                    return {key: value}
    if options and not open_choice:
        return None
    if codings and isinstance(codings[0], dict) and codings[0].get("code"):
        coding = {
            k: codings[0][k] for k in ("system", "version", "code", "display") if k in codings[0]
        }
        return {"valueCoding": coding}
    if isinstance(value, str) and value:
        # R4 answers a choice item with a Coding (a string only where its options are
        # strings, matched above): a bare code, such as %patient.gender against an
        # answerValueSet, is a Coding of that code; open-choice keeps free text.
        return {"valueString": value} if open_choice else {"valueCoding": {"code": value}}
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def answer_value(
    kind: str | None, value: Any, options: Sequence[dict[str, Any]] = ()
) -> dict[str, Any] | None:
    """``QuestionnaireResponse.item.answer`` for one value, by the item's type; None
    when the value does not fit the type."""
    if kind == "boolean":
        return {"valueBoolean": value} if isinstance(value, bool) else None
    if kind == "decimal":
        return {"valueDecimal": value} if _number(value) else None
    if kind == "integer":
        if _number(value) and value == int(value):
            return {"valueInteger": int(value)}
        return None
    if kind == "date":
        if isinstance(value, str) and _DATE_TIME.match(value):
            return {"valueDate": value[:10]}
        return None
    if kind == "dateTime":
        if isinstance(value, str) and _DATE_TIME.match(value):
            return {"valueDateTime": value}
        if isinstance(value, datetime):
            return {"valueDateTime": value.isoformat()}
        return None
    if kind == "time":
        return {"valueTime": value} if isinstance(value, str) and _TIME.match(value) else None
    if kind in ("string", "text"):
        if isinstance(value, str) and value:
            return {"valueString": value}
        if _number(value) or isinstance(value, bool):
            return {"valueString": str(value).lower() if isinstance(value, bool) else str(value)}
        return None
    if kind == "url":
        return {"valueUri": value} if isinstance(value, str) and value else None
    if kind in ("choice", "open-choice"):
        return _choice(value, options, kind == "open-choice")
    if kind == "attachment":
        return {"valueAttachment": value} if isinstance(value, dict) else None
    if kind == "reference":
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            return {"valueReference": value}
        if isinstance(value, dict) and value.get("resourceType") and value.get("id"):
            return {"valueReference": {"reference": f"{value['resourceType']}/{value['id']}"}}
        return None
    if kind == "quantity":
        if isinstance(value, dict) and _number(value.get("value")):
            return {"valueQuantity": value}
        if _number(value):
            return {"valueQuantity": {"value": value}}
        return None
    return None


def launch_names(questionnaire: dict[str, Any]) -> list[str]:
    """The names the Questionnaire's ``sdc-questionnaire-launchContext`` extensions declare."""
    names = []
    for extension in questionnaire.get("extension") or []:
        if not isinstance(extension, dict) or extension.get("url") != LAUNCH_CONTEXT:
            continue
        for part in extension.get("extension") or []:
            if part.get("url") != "name":
                continue
            code = (part.get("valueCoding") or {}).get("code") or part.get("valueId")
            if isinstance(code, str):
                names.append(code)
    return names


def populate_response(
    questionnaire: dict[str, Any],
    subject: str,
    variables: dict[str, Any],
    *,
    authored: str,
    searcher: Searcher | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The QuestionnaireResponse of ``questionnaire`` for ``Patient/<subject>`` with the
    launch context ``variables`` (name -> resource), and the warnings (issues);
    ``searcher`` runs the ``x-fhir-query`` expressions (none: they are not supported)."""
    population = _Population(questionnaire, variables, searcher)
    root = population.scope(questionnaire, {k: v for k, v in variables.items()})
    items = population.items(questionnaire.get("item") or [], root)
    response: dict[str, Any] = {"resourceType": "QuestionnaireResponse"}
    url = questionnaire.get("url")
    if isinstance(url, str):
        version = questionnaire.get("version")
        response["questionnaire"] = f"{url}|{version}" if version else url
    response.update(
        {
            "status": "in-progress",
            "subject": {"reference": f"Patient/{subject}"},
            "authored": authored,
        }
    )
    if items:
        response["item"] = items
    return response, population.issues


def populate(
    session: Session,
    body: Any,
    *,
    base: str,
    now: datetime,
    searches: SearchLimits | None = None,
    forms: Forms | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Run ``$populate``; the output Parameters and the golden ids whose data it disclosed.

    ``searches``: the caller's scopes and the paging bounds for ``x-fhir-query``
    expressions (None: they are not supported); ``forms``: the stored Questionnaires that
    ``canonical`` and ``questionnaireRef`` name (None: only an inline one)."""
    request = parse_populate_request(body, base, forms)
    disclosed: list[str] = []
    issues: list[dict[str, Any]] = []

    def golden(golden_id: str) -> dict[str, Any]:
        stored = read_patient(session, golden_id)
        if stored.resource is not None and stored.resource.get("active") is False:
            survivor = survivor_of(session, golden_id)
            if survivor is not None:
                issues.append(
                    issue(
                        "informational",
                        f"Patient/{golden_id} was merged into Patient/{survivor}: "
                        "its record is the one used.",
                        severity="information",
                    )
                )
                golden_id = survivor
                stored = read_patient(session, survivor)
        disclosed.append(golden_id)
        return stored.as_dict()

    subject = request.subject
    variables: dict[str, Any] = {}
    if request.local:
        patient = golden(subject)
        subject = str(patient.get("id") or subject)
        variables["patient"] = patient
    for name, golden_ids in request.context_patients.items():
        variables[name] = [golden(golden_id) for golden_id in golden_ids]
    for name, resources in request.contexts.items():
        variables[name] = resources if len(resources) > 1 else resources[0]
    declared = launch_names(request.questionnaire)
    for name in sorted(set(request.contexts) | set(request.context_patients)):
        if name not in declared and name != "patient":
            issues.append(
                issue(
                    "informational",
                    f"context {name} is not a launchContext the Questionnaire declares.",
                    severity="warning",
                    expression="context",
                )
            )
    for name in declared:
        if name not in variables:
            # Declared but not given (or local=false for the patient): an empty
            # collection, so that expressions using it find nothing instead of failing.
            variables[name] = []
            issues.append(
                issue(
                    "informational",
                    f"launchContext {name} was not given.",
                    severity="warning",
                    expression="context",
                )
            )
    variables.setdefault("patient", [])
    searcher = None if searches is None else Searcher(session, base, searches, disclosed)
    response, warnings = populate_response(
        request.questionnaire,
        subject,
        variables,
        authored=now.isoformat(timespec="seconds"),
        searcher=searcher,
    )
    issues.extend(warnings)
    parameters: list[dict[str, Any]] = [{"name": "response", "resource": response}]
    if issues:
        parameters.append({"name": "issues", "resource": operation_outcome(issues)})
    return {"resourceType": "Parameters", "parameter": parameters}, disclosed
