"""HL7 v2 ADT messages mapped to FHIR R4 Patient and Encounter resources (pure, no I/O).

A hospital's admission, discharge and transfer feed (``ADT^A01`` … ``ADT^A47``) carries
the same demographics the EHR's FHIR API would: PID becomes a ``Patient``, PV1 an
``Encounter``, following the HL7 v2-to-FHIR mapping IG
(https://build.fhir.org/ig/HL7/v2-to-fhir/, "PID to Patient", "PV1 to Encounter",
"CX to Identifier", "XPN to HumanName", "XAD to Address", "XTN to ContactPoint"). The
resources then go through the same validation, normalization and matching as pulled ones.

Messages are split by the ``hl7`` library (separators from MSH-1/MSH-2, escape
sequences ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\``). A message that cannot be read, or whose
patient has no identifier, raises :class:`Hl7v2Error`, whose ``location`` names the
segment and field (``PID-3``) and whose reason never quotes a value.

Ids: a Patient's FHIR id is its PID-3 identifier of type MR (else PI, else the first);
an Encounter's is its PV1-19 visit number. A value that is not a FHIR id
(``[A-Za-z0-9.-]{1,64}``) is replaced by ``h`` + 40 hex digits of its SHA-256, so the
same value always gives the same id. A Patient's ``meta.lastUpdated`` is the event's
time (EVN-2, else MSH-7): the pipeline never lets an older message overwrite a newer one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import hl7

from fhir_mapping.identifiers import V2_0203

#: The FHIR id syntax (https://hl7.org/fhir/R4/datatypes.html#id).
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
HASHED_ID_PREFIX = "h"
HASHED_ID_HEX = 40
SSN_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
BCP_47 = "urn:ietf:bcp:47"
#: System of an identifier whose assigning authority (CX-4) is only a namespace id, when
#: the source maps no system for it (``identifier_systems``): this prefix + the namespace.
NAMESPACE_SYSTEM_PREFIX = "urn:askonce:hl7v2:assigning-authority:"
#: PID-3 identifier types (v2 table 0203) tried, in order, for the Patient's id.
PATIENT_ID_TYPES = ("MR", "PI", "PT", "MRT")

#: Trigger events whose message deletes what it names, instead of adding or updating it.
EVENT_DELETE_PERSON = "A29"
EVENT_DELETE_VISIT = "A23"
#: Events that merge (or move) a prior patient identifier (MRG-1) into PID-3.
MERGE_EVENTS = frozenset({"A18", "A30", "A34", "A36", "A39", "A40", "A41", "A47"})
#: Events after which the visit is no longer going on (an ended or cancelled one).
CANCEL_EVENTS = frozenset({"A11", "A27", "A38"})
DISCHARGE_EVENTS = frozenset({"A03"})
PLANNED_EVENTS = frozenset({"A05", "A14"})

#: PV1-2 patient class (v2 table 0004) -> Encounter.class (v3 ActCode); "N" (not
#: applicable) means the message describes no visit.
PATIENT_CLASS = {
    "E": ("EMER", "emergency"),
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "P": ("PRENC", "pre-admission"),
    "R": ("AMB", "ambulatory"),
    "B": ("AMB", "ambulatory"),
    "C": ("AMB", "ambulatory"),
}
NO_VISIT_CLASS = "N"
#: PID-8 administrative sex (v2 table 0001) -> Patient.gender.
GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
#: PID-16 marital status (v2 table 0002) -> the FHIR value set's code of the same meaning
#: (http://hl7.org/fhir/R4/valueset-marital-status.html), where one has it; the v2 code
#: is kept beside it either way.
V2_0002 = "http://terminology.hl7.org/CodeSystem/v2-0002"
V3_MARITAL_STATUS = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
MARITAL_STATUS = {
    "D": (V3_MARITAL_STATUS, "D", "Divorced"),
    "E": (V3_MARITAL_STATUS, "L", "Legally Separated"),
    "I": (V3_MARITAL_STATUS, "I", "Interlocutory"),
    "M": (V3_MARITAL_STATUS, "M", "Married"),
    "N": (V3_MARITAL_STATUS, "A", "Annulled"),
    "S": (V3_MARITAL_STATUS, "S", "Never Married"),
    "W": (V3_MARITAL_STATUS, "W", "Widowed"),
    "U": ("http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "UNK", "unknown"),
}
#: Coding systems (CWE-3) that name v2 table 0002.
V2_0002_NAMES = frozenset({"", "HL70002"})
#: XPN-7 name type (v2 table 0200) -> HumanName.use.
NAME_USE = {
    "L": "official",
    "D": "usual",
    "A": "usual",
    "M": "maiden",
    "N": "nickname",
    "S": "anonymous",
    "T": "temp",
}
#: XAD-7 address type (v2 table 0190) -> Address.use, or Address.type for "M" and "SH".
ADDRESS_USE = {"H": "home", "P": "home", "B": "work", "O": "work", "C": "temp", "BA": "old"}
ADDRESS_TYPE = {"M": "postal", "SH": "postal"}
#: XTN-2 telecommunication use (v2 table 0201) -> ContactPoint.use.
TELECOM_USE = {"PRN": "home", "ORN": "home", "VHN": "home", "WPN": "work"}
#: XTN-3 equipment type (v2 table 0202) -> ContactPoint.system (and "mobile" use for CP).
TELECOM_SYSTEM = {
    "PH": "phone",
    "CP": "phone",
    "FX": "fax",
    "BP": "pager",
    "Internet": "email",
    "X.400": "email",
    "MD": "other",
    "TDD": "other",
    "TTY": "other",
}
#: DTM precision: digits of YYYY, YYYYMM, YYYYMMDD.
YEAR_DIGITS, MONTH_DIGITS, DAY_DIGITS = 4, 6, 8
_DTM = re.compile(
    r"(?P<digits>\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2})?)?)?)?)?)"
    r"(?P<fraction>\.\d{1,4})?(?P<offset>[+-]\d{4})?"
)


class Hl7v2Error(ValueError):
    """A message that cannot be read or mapped. ``location`` is a segment or field
    (``MSH-9``, ``PID-3``); ``code`` is the v2 table 0357 error code for the ACK's ERR."""

    def __init__(self, location: str, reason: str, *, code: str = "207") -> None:
        super().__init__(f"{location}: {reason}")
        self.location = location
        self.reason = reason
        self.code = code


#: v2 table 0357 message error condition codes used in ACKs.
ERR_REQUIRED_FIELD_MISSING = "101"
ERR_DATA_TYPE = "102"
ERR_SEGMENT_SEQUENCE = "100"
ERR_UNSUPPORTED_MESSAGE_TYPE = "200"
ERR_APPLICATION = "207"


@dataclass
class AdtMessage:
    """What one ADT message asks for, as FHIR resources and ids."""

    #: The trigger event (MSH-9.2, else EVN-1): ``A01``…
    event: str
    patient: dict[str, Any] | None = None
    encounter: dict[str, Any] | None = None
    #: Patient ids merged into (or replaced by) ``patient`` (MRG-1 of A40, A47…).
    merged_patient_ids: list[str] = field(default_factory=list)
    deleted_patient_ids: list[str] = field(default_factory=list)
    deleted_encounter_ids: list[str] = field(default_factory=list)


# -- reading the parsed message ------------------------------------------------------------


class Component(str):
    """A component's text: its first subcomponent (``street&name&number`` reads as
    ``street``), with every subcomponent in ``subs`` (an HD's ``namespace&oid&ISO``)."""

    subs: tuple[str, ...]

    def __new__(cls, subs: tuple[str, ...]) -> Component:
        text = super().__new__(cls, subs[0] if subs else "")
        text.subs = subs
        return text


Repetition = list[str]  # one repetition of a field: its components (Component or str)


def _text(message: Any, value: Any) -> str:
    """A leaf's value with the message's escape sequences decoded."""
    raw = str(value)
    return message.unescape(raw) if "\\" in raw else raw


def _component(message: Any, component: Any) -> str:
    if isinstance(component, str):
        return _text(message, component)
    return Component(tuple(_text(message, sub) for sub in component))


def repetitions(message: Any, segment: Any, number: int) -> list[Repetition]:
    """Field ``number`` of ``segment``: its repetitions, each a list of component texts."""
    if segment is None or number >= len(segment):
        return []
    value = segment[number]
    if isinstance(value, str):
        return [[_text(message, value)]] if value else []
    if len(value) == 1 and isinstance(value[0], str):  # one plain value
        return [[_text(message, value[0])]] if value[0] else []
    out: list[Repetition] = []
    for rep in value:
        if isinstance(rep, str):
            out.append([_text(message, rep)])
            continue
        components = [_component(message, c) for c in rep]
        if any(components):
            out.append(components)
    return out


def _first(reps: list[Repetition], index: int = 0) -> str:
    """Component ``index`` (0-based) of a field's first repetition, or ''."""
    return _part(reps[0], index) if reps else ""


def _part(rep: Repetition, index: int) -> str:
    return rep[index].strip() if index < len(rep) else ""


def _segment(message: Any, name: str) -> Any:
    try:
        return message.segment(name)
    except KeyError:
        return None


# -- data types ------------------------------------------------------------------------------


def parse_dtm(value: str, location: str, zone: tzinfo) -> str | None:
    """A v2 DTM (``YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]``) as a FHIR date or dateTime.

    A time without an offset is read in ``zone`` (the source's ``timezone`` option), as
    FHIR requires an offset on any dateTime with a time. Raises for anything else.
    """
    value = value.strip()
    if not value:
        return None
    match = _DTM.fullmatch(value)
    if match is None:
        raise Hl7v2Error(
            location, "not a DTM (YYYY[MM[DD[HHMM[SS]]]][+/-ZZZZ])", code=ERR_DATA_TYPE
        )
    digits = match["digits"]
    try:
        if len(digits) == YEAR_DIGITS:
            return digits
        if len(digits) == MONTH_DIGITS:
            datetime(int(digits[:4]), int(digits[4:6]), 1)
            return f"{digits[:4]}-{digits[4:6]}"
        day = datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
        if len(digits) == DAY_DIGITS:
            return day.date().isoformat()
        padded = digits.ljust(14, "0")
        moment = day.replace(
            hour=int(padded[8:10]), minute=int(padded[10:12]), second=int(padded[12:14])
        )
    except ValueError:
        raise Hl7v2Error(location, "not a calendar date or time", code=ERR_DATA_TYPE) from None
    offset = match["offset"]
    if offset:
        sign = 1 if offset[0] == "+" else -1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        moment = moment.replace(tzinfo=timezone(sign * delta))
    else:
        moment = moment.replace(tzinfo=zone)
    text = moment.isoformat()
    return text.replace("+00:00", "Z") if text.endswith("+00:00") else text


def fhir_id(value: str) -> str:
    """A FHIR id for an identifier value: itself if it is one, else a stable digest."""
    value = value.strip()
    if FHIR_ID.fullmatch(value):
        return value
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()
    return HASHED_ID_PREFIX + digest[:HASHED_ID_HEX]


def _system(rep: Repetition, systems: Mapping[str, str]) -> str | None:
    """The identifier system of a CX's assigning authority (CX-4, an HD: namespace id &
    universal id & universal id type): the source's ``identifier_systems`` entry for the
    namespace, else the universal id (``urn:oid:`` for type ISO, itself for URI), else
    :data:`NAMESPACE_SYSTEM_PREFIX` + the namespace."""
    authority = rep[3] if len(rep) > 3 else ""
    subs = [part.strip() for part in getattr(authority, "subs", (authority,))]
    namespace = subs[0] if subs else ""
    universal = subs[1] if len(subs) > 1 else ""
    kind = subs[2].upper() if len(subs) > 2 else ""
    if namespace and namespace in systems:
        return systems[namespace]
    if universal and kind == "ISO":
        return universal if universal.startswith("urn:oid:") else "urn:oid:" + universal
    if universal and kind in ("URI", "URL"):
        return universal
    return NAMESPACE_SYSTEM_PREFIX + namespace if namespace else None


def _identifier(
    rep: Repetition, systems: Mapping[str, str], type_code: str | None = None
) -> dict[str, Any]:
    value = _part(rep, 0)
    code = type_code or _part(rep, 4)
    identifier: dict[str, Any] = {"value": value}
    system = SSN_SYSTEM if code == "SS" else _system(rep, systems)
    if system:
        identifier["system"] = system
    if code:
        identifier["type"] = {"coding": [{"system": V2_0203, "code": code}]}
    return identifier


def _name(rep: Repetition) -> dict[str, Any] | None:
    family = _part(rep, 0)
    given = [g for g in (_part(rep, 1), *_part(rep, 2).split()) if g]
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if not name:
        return None
    suffix = [s for s in (_part(rep, 3), _part(rep, 5)) if s]
    if suffix:
        name["suffix"] = suffix
    if _part(rep, 4):
        name["prefix"] = [_part(rep, 4)]
    use = NAME_USE.get(_part(rep, 6))
    if use:
        name["use"] = use
    return name


def _address(rep: Repetition) -> dict[str, Any] | None:
    address: dict[str, Any] = {}
    lines = [line for line in (_part(rep, 0), _part(rep, 1)) if line]
    if lines:
        address["line"] = lines
    for index, key in ((2, "city"), (3, "state"), (4, "postalCode"), (5, "country")):
        if _part(rep, index):
            address[key] = _part(rep, index)
    if not address:
        return None
    kind = _part(rep, 6)
    if kind in ADDRESS_USE:
        address["use"] = ADDRESS_USE[kind]
    elif kind in ADDRESS_TYPE:
        address["type"] = ADDRESS_TYPE[kind]
    return address


def _telecom(rep: Repetition, default_use: str) -> dict[str, Any] | None:
    use_code, equipment = _part(rep, 1), _part(rep, 2)
    email = _part(rep, 3)
    if email or use_code == "NET" or equipment in ("Internet", "X.400"):
        return (
            {"system": "email", "value": email or _part(rep, 0)}
            if (email or _part(rep, 0))
            else None
        )
    # XTN-12 unformatted number, else XTN-1 (formatted, deprecated but the most sent),
    # else country/area/local/extension (XTN-5..8).
    number = _part(rep, 11) or _part(rep, 0)
    if not number:
        local = _part(rep, 6)
        if not local:
            return None
        country, area, extension = _part(rep, 4), _part(rep, 5), _part(rep, 7)
        number = (f"+{country.lstrip('+')} " if country else "") + (f"({area}) " if area else "")
        number += local + (f" x{extension}" if extension else "")
    point: dict[str, Any] = {"system": TELECOM_SYSTEM.get(equipment, "phone"), "value": number}
    use = "mobile" if equipment == "CP" else TELECOM_USE.get(use_code, default_use)
    if use:
        point["use"] = use
    return point


# -- segments ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MappingOptions:
    """A source's settings for its messages."""

    #: CX-4 namespace id -> identifier system (``--option identifier_systems={...}``).
    identifier_systems: Mapping[str, str] = field(default_factory=dict)
    #: Time zone of DTMs sent without an offset (``--option timezone=America/Chicago``).
    zone: tzinfo = UTC


def _marital_status(reps: list[Repetition]) -> dict[str, Any] | None:
    """PID-16 (CWE) as ``maritalStatus``: a table 0002 code as its FHIR code (where one
    means the same) and as itself, another system's code or a text as given."""
    if not reps:
        return None
    code, text, system = (_part(reps[0], i) for i in range(3))
    concept: dict[str, Any] = {}
    if code and system.upper() in V2_0002_NAMES:
        codings = []
        mapped = MARITAL_STATUS.get(code.upper())
        if mapped is not None:
            codings.append({"system": mapped[0], "code": mapped[1], "display": mapped[2]})
        codings.append({"system": V2_0002, "code": code.upper()})
        concept["coding"] = codings
    elif code:
        concept["coding"] = [{"code": code}]
    if text:
        concept["text"] = text
    return concept or None


def patient_id_of(reps: list[Repetition]) -> str | None:
    """The FHIR id of the Patient a PID-3 (or MRG-1) names: its MR identifier, else the first."""
    usable = [rep for rep in reps if _part(rep, 0)]
    for code in PATIENT_ID_TYPES:
        for rep in usable:
            if _part(rep, 4) == code:
                return fhir_id(_part(rep, 0))
    return fhir_id(_part(usable[0], 0)) if usable else None


def map_pid(message: Any, pid: Any, updated: str | None, options: MappingOptions) -> dict[str, Any]:
    """The Patient of a PID segment."""
    ids = repetitions(message, pid, 3)
    rid = patient_id_of(ids)
    if rid is None:
        raise Hl7v2Error("PID-3", "no patient identifier", code=ERR_REQUIRED_FIELD_MISSING)
    systems = options.identifier_systems
    patient: dict[str, Any] = {"resourceType": "Patient", "id": rid}
    if updated:
        patient["meta"] = {"lastUpdated": updated}
    identifiers = [_identifier(rep, systems) for rep in ids if _part(rep, 0)]
    ssn = _first(repetitions(message, pid, 19))
    if ssn and not any(i.get("system") == SSN_SYSTEM for i in identifiers):
        identifiers.append(_identifier([ssn], systems, "SS"))
    licence = repetitions(message, pid, 20)
    if licence and _part(licence[0], 0):
        dl = {
            "value": _part(licence[0], 0),
            "type": {"coding": [{"system": V2_0203, "code": "DL"}]},
        }
        if _part(licence[0], 1):
            dl["system"] = NAMESPACE_SYSTEM_PREFIX + "DL-" + _part(licence[0], 1)
        identifiers.append(dl)
    patient["identifier"] = identifiers
    names = [n for n in map(_name, repetitions(message, pid, 5)) if n]
    if names:
        patient["name"] = names
    gender = GENDER.get(_first(repetitions(message, pid, 8)).upper())
    if gender:
        patient["gender"] = gender
    birth = parse_dtm(_first(repetitions(message, pid, 7)), "PID-7", options.zone)
    if birth:
        patient["birthDate"] = birth[:10]
    addresses = [a for a in map(_address, repetitions(message, pid, 11)) if a]
    if addresses:
        patient["address"] = addresses
    telecom = [t for t in (_telecom(r, "home") for r in repetitions(message, pid, 13)) if t]
    telecom += [t for t in (_telecom(r, "work") for r in repetitions(message, pid, 14)) if t]
    if telecom:
        patient["telecom"] = telecom
    language = repetitions(message, pid, 15)
    if language and _part(language[0], 0):
        coding = {"system": BCP_47, "code": _part(language[0], 0)}
        if _part(language[0], 1):
            coding["display"] = _part(language[0], 1)
        patient["communication"] = [{"language": {"coding": [coding]}, "preferred": True}]
    marital = _marital_status(repetitions(message, pid, 16))
    if marital:
        patient["maritalStatus"] = marital
    twin = _first(repetitions(message, pid, 24)).upper()
    order = _first(repetitions(message, pid, 25))
    if order.isdigit() and int(order) > 0 and twin != "N":
        patient["multipleBirthInteger"] = int(order)
    elif twin in ("Y", "N"):
        patient["multipleBirthBoolean"] = twin == "Y"
    died = parse_dtm(_first(repetitions(message, pid, 29)), "PID-29", options.zone)
    if died:
        patient["deceasedDateTime"] = died
    elif _first(repetitions(message, pid, 30)).upper() == "Y":
        patient["deceasedBoolean"] = True
    return patient


def visit_id_of(message: Any, pv1: Any) -> str | None:
    """The FHIR id of the Encounter a PV1 describes (its PV1-19 visit number)."""
    number = _first(repetitions(message, pv1, 19))
    return fhir_id(number) if number else None


def map_pv1(
    message: Any,
    pv1: Any,
    event: str,
    patient_id: str,
    updated: str | None,
    options: MappingOptions,
) -> dict[str, Any] | None:
    """The Encounter of a PV1 segment, or None when it names no visit (no PV1-19 visit
    number, or patient class ``N``, not applicable: an A28/A31 person update)."""
    rid = visit_id_of(message, pv1)
    patient_class = _first(repetitions(message, pv1, 2)).upper()
    if rid is None or patient_class == NO_VISIT_CLASS:
        return None
    start = parse_dtm(_first(repetitions(message, pv1, 44)), "PV1-44", options.zone)
    end = parse_dtm(_first(repetitions(message, pv1, 45)), "PV1-45", options.zone)
    if event in CANCEL_EVENTS:
        status = "cancelled"
    elif end or event in DISCHARGE_EVENTS:
        status = "finished"
    elif event in PLANNED_EVENTS:
        status = "planned"
    else:
        status = "in-progress"
    code, display = PATIENT_CLASS.get(patient_class, ("UNK", "unknown"))
    system = V3_ACT_CODE if patient_class in PATIENT_CLASS else V3_NULL_FLAVOR
    visit = repetitions(message, pv1, 19)[0]
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": rid,
        "identifier": [_identifier(visit, options.identifier_systems, _part(visit, 4) or "VN")],
        "status": status,
        "class": {"system": system, "code": code, "display": display},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if updated:
        encounter["meta"] = {"lastUpdated": updated}
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    if period:
        encounter["period"] = period
    return encounter


# -- messages ----------------------------------------------------------------------------


def _normalize_segments(text: str) -> str:
    """Segments end with CR; feeds often send CRLF or LF (files, some engines)."""
    lines = re.split(r"\r\n|\n|\r", text.strip("\r\n\x0b\x1c"))
    return "\r".join(line for line in lines if line.strip())


def parse_hl7(text: str) -> Any:
    """The ``hl7.Message`` of a message's text; raises :class:`Hl7v2Error` if it has no MSH."""
    text = _normalize_segments(text)
    if not text.startswith("MSH") or len(text) < len("MSH|^~\\&"):
        raise Hl7v2Error(
            "MSH", "the message does not start with an MSH segment", code=ERR_SEGMENT_SEQUENCE
        )
    try:
        return hl7.parse(text)
    except Exception as exc:  # the library's own errors are plain exceptions
        raise Hl7v2Error(
            "MSH", f"unreadable message ({type(exc).__name__})", code=ERR_SEGMENT_SEQUENCE
        ) from None


def header(message: Any) -> tuple[str, str, str]:
    """(MSH-9.1 message type, its trigger event: MSH-9.2 or EVN-1, MSH-10 control id)."""
    msh = _segment(message, "MSH")
    kind = repetitions(message, msh, 9)
    message_type = _first(kind).upper()
    event = (
        _first(kind, 1).upper() or _first(repetitions(message, _segment(message, "EVN"), 1)).upper()
    )
    control_id = _first(repetitions(message, msh, 10))
    return message_type, event, control_id


def accept_ack_type(message: Any) -> str:
    """MSH-15, the accept acknowledgment type (AL, NE, ER, SU): set means enhanced mode."""
    return _first(repetitions(message, _segment(message, "MSH"), 15)).upper()


def map_adt(message: Any, options: MappingOptions | None = None) -> AdtMessage:
    """What an ADT message means, as FHIR resources (see the module's docstring)."""
    options = options or MappingOptions()
    message_type, event, _ = header(message)
    if message_type != "ADT":
        raise Hl7v2Error("MSH-9", "only ADT messages are taken", code=ERR_UNSUPPORTED_MESSAGE_TYPE)
    if not event:
        raise Hl7v2Error("MSH-9", "no trigger event", code=ERR_REQUIRED_FIELD_MISSING)
    adt = AdtMessage(event)
    msh = _segment(message, "MSH")
    evn = _segment(message, "EVN")
    updated = parse_dtm(_first(repetitions(message, evn, 2)), "EVN-2", options.zone) or parse_dtm(
        _first(repetitions(message, msh, 7)), "MSH-7", options.zone
    )
    if updated is not None and len(updated) <= len("YYYY-MM-DD"):
        updated = None  # lastUpdated is an instant; a bare date says too little
    pid = _segment(message, "PID")
    if pid is None:
        raise Hl7v2Error(
            "PID", "an ADT message needs a PID segment", code=ERR_REQUIRED_FIELD_MISSING
        )
    pv1 = _segment(message, "PV1")
    if event == EVENT_DELETE_PERSON:
        rid = patient_id_of(repetitions(message, pid, 3))
        if rid is None:
            raise Hl7v2Error("PID-3", "no patient identifier", code=ERR_REQUIRED_FIELD_MISSING)
        adt.deleted_patient_ids.append(rid)
        return adt
    patient = map_pid(message, pid, updated, options)
    adt.patient = patient
    if event == EVENT_DELETE_VISIT:
        visit = visit_id_of(message, pv1) if pv1 is not None else None
        if visit is None:
            raise Hl7v2Error("PV1-19", "no visit number to delete", code=ERR_REQUIRED_FIELD_MISSING)
        adt.deleted_encounter_ids.append(visit)
        return adt
    if event in MERGE_EVENTS:
        mrg = _segment(message, "MRG")
        if mrg is None:
            raise Hl7v2Error(
                "MRG", f"an {event} message needs an MRG segment", code=ERR_REQUIRED_FIELD_MISSING
            )
        prior = patient_id_of(repetitions(message, mrg, 1))
        if prior is None:
            raise Hl7v2Error(
                "MRG-1", "no prior patient identifier", code=ERR_REQUIRED_FIELD_MISSING
            )
        if prior != patient["id"]:
            adt.merged_patient_ids.append(prior)
    if pv1 is not None:
        adt.encounter = map_pv1(message, pv1, event, patient["id"], updated, options)
    return adt


def _hd(message: Any, msh: Any, number: int) -> str:
    """An MSH field (an HD: namespace^universal id^type) re-encoded with ``^``."""
    reps = repetitions(message, msh, number)
    return "^".join(_escape(part) for part in reps[0]).rstrip("^") if reps else ""


def ack(
    message: Any | None,
    code: str,
    error: Hl7v2Error | None = None,
    *,
    control_id: str,
    now: datetime | None = None,
) -> str:
    """The original-mode acknowledgment of ``message`` (v2 section 2.9.2): MSH (sender and
    receiver swapped, ``ACK^<event>^ACK``), MSA (``code`` and the message's MSH-10) and,
    for AE/AR, an ERR with the location, the table 0357 code and the reason. ``message``
    None (unreadable) gives an ACK with an empty MSA-2. Segments end with CR."""
    msh = _segment(message, "MSH") if message is not None else None
    event = original = processing = ""
    version = "2.5.1"
    if msh is not None:
        _, event, original = header(message)
        processing = _first(repetitions(message, msh, 11))
        version = _first(repetitions(message, msh, 12)) or version
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z")
    fields = ["MSH", "^~\\&"]
    fields += [_hd(message, msh, n) if msh is not None else "" for n in (5, 6, 3, 4)]
    fields += [stamp, "", f"ACK^{_escape(event)}^ACK", _escape(control_id)]
    fields += [_escape(processing), _escape(version)]
    segments = ["|".join(fields), f"MSA|{code}|{_escape(original)}"]
    if error is not None:
        segment, _, number = error.location.partition("-")
        where = f"{segment}^1^{number}" if number else segment
        segments.append(
            "|".join(
                ["ERR", "", where, f"{error.code}^^HL70357", "E", "", "", "", _escape(error.reason)]
            )
        )
    return "\r".join(segments) + "\r"


def _escape(text: str) -> str:
    """``text`` with the standard separators escaped (v2 section 2.7)."""
    out = text.replace("\\", "\\E\\")
    for char, escape in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, escape)
    return out
