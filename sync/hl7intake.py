"""Push intake: HL7 v2 ADT messages over MLLP, fed to the same pipeline as pulled resources.

A source of kind ``hl7v2`` (``askonce sources add adt --kind hl7v2 --url
mllp://0.0.0.0:2575``) is a port an interface engine sends its ADT feed to;
``askonce mllp`` (:mod:`sync.mllp_listener`) listens on the port of every such source.
Each message is, in order:

1. framed by MLLP (``<VT> message <FS><CR>``, :mod:`hl7.mllp`) and decoded (UTF-8, else
   ISO-8859-1, so no message is refused for its bytes);
2. mapped by :mod:`fhir_mapping.hl7v2`: PID to a Patient, PV1 to an Encounter; A29 and
   A23 delete the person or the visit, A40 (and the other MRG events) merge the prior
   patient into the surviving one;
3. ingested in one transaction through :func:`sync.pipeline.ingest_page` (validation,
   quarantine, content hash, the MPI, Encounter attachment, outbox events);
4. acknowledged (original mode) once that transaction has committed: ``AA``; ``AE`` with
   an ERR when something the message carried was quarantined (kept, with its reason,
   for ``askonce sources status``); ``AR`` when it is not an ADT message, or when the
   database failed (nothing was kept: the sender is to send it again).

A message that cannot be parsed or mapped at all is kept too, quarantined as an
``unreadable-…`` Patient record whose raw JSON holds the message's text. An empty one (a
keep-alive) is answered ``AR`` and kept nowhere. Each message answered is counted in the
source's feed (:mod:`sync.feed`) in the same transaction: its time and its answer, which
is what shows a feed is alive. Logs carry the source id, the event and the
acknowledgment code, never a value of the message.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors.config import Page
from connectors.preflight import Preflight
from fhir_mapping.hl7v2 import (
    ERR_APPLICATION,
    ERR_DATA_TYPE,
    ERR_SEGMENT_SEQUENCE,
    ERR_UNSUPPORTED_MESSAGE_TYPE,
    AdtMessage,
    Hl7v2Error,
    MappingOptions,
    accept_ack_type,
    ack,
    map_adt,
    parse_hl7,
)
from store.models import Source as SourceRow
from store.models import SourceRecord
from store.types import utcnow
from sync import feed
from sync.encounters import replacements
from sync.patients import PatientOptions
from sync.pipeline import IngestResult, apply_deletions, ingest_page
from sync.records import STATUS_QUARANTINED
from sync.repeats import Repeats
from sync.runner import SourceUnavailableError, SyncError, bound_patient_options, lock_source

log = logging.getLogger(__name__)

SCHEME = "mllp"
DEFAULT_PORT = 2575
#: Largest message taken (bytes between the MLLP start and end characters).
MAX_MESSAGE_BYTES = 1 << 20
#: Source config keys this module reads (``--option KEY=VALUE``).
TIMEZONE_KEY = "timezone"
IDENTIFIER_SYSTEMS_KEY = "identifier_systems"
#: Source options of a listener over TLS (``--option tls_cert=PATH``…): the PEM
#: certificate chain it presents, its private key when that file does not hold it, and
#: the PEM CA bundle its clients' certificates must chain to (mutual TLS, as IHE ATNA's
#: secure nodes use; without it any client that speaks TLS is served).
TLS_CERT_KEY, TLS_KEY_KEY, TLS_CLIENT_CA_KEY = "tls_cert", "tls_key", "tls_client_ca"
TLS_KEYS = (TLS_CERT_KEY, TLS_KEY_KEY, TLS_CLIENT_CA_KEY)
#: ``askonce sources check`` warns this many days before the listener's certificate expires.
CERT_EXPIRY_WARNING_DAYS = 30
CONTROL_ID_BYTES = 10
ACK_ACCEPT, ACK_ERROR, ACK_REJECT = "AA", "AE", "AR"
COMMIT_ACCEPT, COMMIT_REJECT = "CA", "CR"


class Hl7v2ConfigError(SyncError):
    """An hl7v2 source whose address or options cannot be used."""


def listen_address(url: str) -> tuple[str, int]:
    """(host, port) of an hl7v2 source's ``mllp://host:port`` URL."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME or not parts.hostname:
        raise Hl7v2ConfigError("an hl7v2 source's URL is mllp://HOST:PORT")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise Hl7v2ConfigError("an hl7v2 source's port is a number from 1 to 65535") from None
    return parts.hostname, port


def mapping_options(config: dict[str, Any] | None) -> MappingOptions:
    """A source's ``timezone`` (IANA name; DTMs without an offset) and
    ``identifier_systems`` (CX-4 namespace id -> identifier system URI)."""
    config = config or {}
    zone_name = config.get(TIMEZONE_KEY) or "UTC"
    try:
        zone = ZoneInfo(str(zone_name))
    except (ZoneInfoNotFoundError, ValueError):
        raise Hl7v2ConfigError("timezone must be an IANA time zone name") from None
    systems = config.get(IDENTIFIER_SYSTEMS_KEY) or {}
    if not isinstance(systems, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in systems.items()
    ):
        raise Hl7v2ConfigError("identifier_systems must be an object of namespace: system URI")
    return MappingOptions(identifier_systems=dict(systems), zone=zone)


def _load_failure(exc: Exception) -> str:
    """Why a PEM file did not load (the OS's or OpenSSL's words: no file content)."""
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or type(exc).__name__)
    if isinstance(exc, OSError):
        return str(exc.strerror or type(exc).__name__)
    return type(exc).__name__


def tls_context(config: dict[str, Any] | None) -> ssl.SSLContext | None:
    """The server TLS context an hl7v2 source's options ask for (None: plain MLLP).

    TLS 1.2 at least; with ``tls_client_ca``, a client must present a certificate that
    chains to that bundle (and to nothing else: the system's CAs are not trusted)."""
    config = config or {}
    cert, key, client_ca = (config.get(name) for name in TLS_KEYS)
    for name, value in zip(TLS_KEYS, (cert, key, client_ca), strict=True):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise Hl7v2ConfigError(f"{name} must be the path of a PEM file")
    if cert is None:
        if key is not None or client_ca is not None:
            raise Hl7v2ConfigError(f"{TLS_KEY_KEY} and {TLS_CLIENT_CA_KEY} go with {TLS_CERT_KEY}")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise Hl7v2ConfigError(
            f"{TLS_CERT_KEY}/{TLS_KEY_KEY}: cannot load the certificate chain and its key "
            f"({_load_failure(exc)})"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ValueError) as exc:
            raise Hl7v2ConfigError(
                f"{TLS_CLIENT_CA_KEY}: cannot load the CA bundle ({_load_failure(exc)})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _expiry(path: str) -> datetime:
    """When the first certificate of the PEM file at ``path`` expires."""
    from cryptography import x509  # only a check reads a certificate: not every import

    with open(path, "rb") as handle:
        first = x509.load_pem_x509_certificates(handle.read())[0]
    return first.not_valid_after_utc


def check_listener(url: str, config: dict[str, Any] | None, report: Preflight) -> None:
    """An hl7v2 source's findings for ``askonce sources check``: its address, and its TLS
    (the files load, the certificate's expiry: an error once it has expired, a warning
    within :data:`CERT_EXPIRY_WARNING_DAYS`; plain MLLP off the loopback is a warning)."""
    try:
        host, _ = listen_address(url)
    except Hl7v2ConfigError as exc:
        report.add("error", "address", str(exc))
        return
    try:
        context = tls_context(config)
    except Hl7v2ConfigError as exc:
        report.add("error", "tls", str(exc))
        return
    if context is None:
        if loopback(host):
            report.add("ok", "tls", "plain MLLP, on the loopback only")
        else:
            report.add(
                "warning",
                "tls",
                "plain MLLP: messages cross the network unencrypted "
                f"(options {TLS_CERT_KEY} and {TLS_KEY_KEY} serve TLS)",
            )
        return
    expires = _expiry(str((config or {})[TLS_CERT_KEY]))
    left = expires - utcnow()
    clients = (
        f", clients need a certificate of {TLS_CLIENT_CA_KEY}"
        if context.verify_mode == ssl.CERT_REQUIRED
        else ""
    )
    when = expires.date().isoformat()
    if left <= timedelta(0):
        report.add("error", "tls", f"the listener's certificate expired on {when}")
    elif left <= timedelta(days=CERT_EXPIRY_WARNING_DAYS):
        report.add("warning", "tls", f"TLS; the certificate expires on {when}{clients}")
    else:
        report.add("ok", "tls", f"TLS, the certificate valid until {when}{clients}")


def loopback(host: str) -> bool:
    """True for a loopback address (or ``localhost``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class AdtResult:
    """What one message did, and the acknowledgment sent back."""

    code: str
    ack: str
    event: str = ""
    ingest: IngestResult = field(default_factory=IngestResult)
    #: The error the ACK's ERR reports (also for AA: None).
    error: Hl7v2Error | None = None


def handle_adt(
    session: Session, source_id: int, adt: AdtMessage, options: PatientOptions
) -> IngestResult:
    """Ingest one mapped ADT message into ``session`` (the caller commits)."""
    result = IngestResult()
    if adt.patient is not None:
        # A merge's prior patients are retired with the survivor's page, whose transaction
        # locks their golden records with its own record; their Encounters move to the
        # survivor (sync.pipeline.retire_replaced, as for a FHIR replaced-by link).
        survivor = str(adt.patient["id"])
        replaced = {prior: survivor for prior in adt.merged_patient_ids if prior != survivor}
        if not replaced and replacements(session, source_id, [survivor]):
            # A message about a patient this feed merged away (A40) after the merge: the
            # retired record stays retired (its PID is not applied, as a FHIR server's
            # merged-away Patient is not read again); its visit goes to the survivor.
            result.resources += 1
            result.skipped += 1
        else:
            page = Page("Patient", [adt.patient], None, replaced=replaced)
            result.add(ingest_page(session, source_id, page, options=options, write_cursor=False))
    if adt.encounter is not None:
        page = Page("Encounter", [adt.encounter], None)
        result.add(ingest_page(session, source_id, page, options=options, write_cursor=False))
    if adt.deleted_encounter_ids:
        result.deleted += apply_deletions(
            session, source_id, "Encounter", adt.deleted_encounter_ids
        )
    if adt.deleted_patient_ids:
        result.deleted += apply_deletions(session, source_id, "Patient", adt.deleted_patient_ids)
    return result


def _quarantine_message(
    session: Session, source_id: int, text: str, error: Hl7v2Error
) -> IngestResult:
    """Keep a message that could not be mapped, as an unreadable record with its reason."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "structure",
                "diagnostics": f"HL7 v2 {error.location}: {error.reason}",
                "location": [error.location],
            }
        ],
        "hl7v2": text,
    }
    page = Page("Patient", [], None, outcomes=[outcome])
    return ingest_page(session, source_id, page, write_cursor=False)


def _quarantine_reason(session: Session, source_id: int, adt: AdtMessage) -> Hl7v2Error:
    """The ERR of an AE: the first quarantined resource of the message, by FHIR path."""
    for resource in (adt.patient, adt.encounter):
        if resource is None:
            continue
        error = session.scalar(
            select(SourceRecord.error).where(
                SourceRecord.source_id == source_id,
                SourceRecord.resource_type == resource["resourceType"],
                SourceRecord.resource_id == str(resource["id"]),
                SourceRecord.status == STATUS_QUARANTINED,
            )
        )
        if error:
            issues = error.get("issues") or [{}]
            path = str(issues[0].get("path") or resource["resourceType"])
            segment = "PID" if resource["resourceType"] == "Patient" else "PV1"
            reason = f"quarantined: {path}: {issues[0].get('reason') or 'invalid'}"
            return Hl7v2Error(segment, reason, code=ERR_DATA_TYPE)
    return Hl7v2Error("MSH", "quarantined", code=ERR_APPLICATION)


def decode(block: bytes) -> str:
    """A message's text: UTF-8 (ASCII included), else ISO-8859-1 (every byte a character)."""
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        return block.decode("latin-1")


def receive_message(
    session_factory: Callable[[], Session],
    source_id: int,
    text: str,
    *,
    default_region: str | None = None,
    repeats: Repeats | None = None,
) -> AdtResult:
    """Map, ingest and commit one message of an hl7v2 source; returns its acknowledgment.

    Never raises for the message's content: a database failure answers ``AR`` (the
    transaction rolled back, nothing kept), and the sender sends it again. A message for
    a disabled source, which the sender sends again and again, is logged as ``repeats``
    admits (the listener's: once a minute per source); every one without it. So is an
    empty message (a block with nothing but white space in it, as some engines send to
    keep a connection open): it is answered ``AR`` and nothing is kept, since there is
    nothing to keep.
    """
    if not text.strip():
        if count := (repeats.admit(("empty", source_id)) if repeats else 1):
            log.warning("hl7v2 message empty", extra={"source_id": source_id, "count": count})
        empty = Hl7v2Error("MSH", "the message is empty", code=ERR_SEGMENT_SEQUENCE)
        return _answered(source_id, None, AdtResult(code=ACK_REJECT, ack="", error=empty))
    try:
        message = parse_hl7(text)
    except Hl7v2Error as exc:
        message = None
        parse_error: Hl7v2Error | None = exc
    else:
        parse_error = None
    result = AdtResult(code=ACK_ACCEPT, ack="")
    try:
        with session_factory() as session:
            source = session.get(SourceRow, source_id)
            if source is None or not source.enabled:
                raise SourceUnavailableError(f"source {source_id} is gone or disabled")
            options = bound_patient_options(source, default_region)
            lock_source(session, source_id)
            adt: AdtMessage | None = None
            error = parse_error
            if message is not None:
                try:
                    adt = map_adt(message, mapping_options(source.config))
                    result.event = adt.event
                except Hl7v2Error as exc:
                    error = exc
            if error is not None and error.code == ERR_UNSUPPORTED_MESSAGE_TYPE:
                # Not an ADT message: not this port's to keep; the sender routes it elsewhere.
                result.code, result.error = ACK_REJECT, error
                feed.note_message(session, source_id, result.code)
                session.commit()
                return _answered(source_id, message, result)
            if adt is None:
                assert error is not None
                result.ingest = _quarantine_message(session, source_id, text, error)
                result.code, result.error = ACK_ERROR, error
            else:
                result.ingest = handle_adt(session, source_id, adt, options)
                if result.ingest.quarantined:
                    result.code = ACK_ERROR
                    result.error = _quarantine_reason(session, source_id, adt)
            feed.note_message(session, source_id, result.code)
            session.commit()
    except SourceUnavailableError:
        # Expected while a steward has the source disabled (or removed it): the sender
        # keeps the message and sends it again, which is taken once the source is enabled.
        if count := (repeats.admit(("disabled", source_id)) if repeats else 1):
            log.warning(
                "hl7v2 message not taken: source disabled",
                extra={"source_id": source_id, "count": count},
            )
        result.code = ACK_REJECT
        result.error = Hl7v2Error(
            "MSH", "the receiving source is disabled; send it again later", code=ERR_APPLICATION
        )
    except Exception as exc:
        log.exception(
            "hl7v2 message not taken", extra={"source_id": source_id, "reason": type(exc).__name__}
        )
        result.code = ACK_REJECT
        result.error = Hl7v2Error(
            "MSH", "the message could not be stored; send it again", code=ERR_APPLICATION
        )
    return _answered(source_id, message, result)


#: MSH-15 accept acknowledgment types (v2 table 0155): whether a commit ACK is sent,
#: given that the message was committed (CA) or not (CR).
_ACCEPT_ACK_SENT = {
    "AL": (True, True),
    "NE": (False, False),
    "ER": (False, True),
    "SU": (True, False),
}


def _answered(source_id: int, message: Any | None, result: AdtResult) -> AdtResult:
    """``result`` with its acknowledgment (logged, ids and codes only).

    Original mode (MSH-15 empty): AA, AE or AR. Enhanced mode (MSH-15 set, v2 section
    2.9.3): a commit acknowledgment, CA once the message is committed (quarantined parts
    included: they are kept) or CR when it is not, sent as MSH-15 asks (AL always, NE
    never, ER only a CR, SU only a CA); ``ack`` is then empty when none is due.
    Application acknowledgments (MSH-16) would go back on a connection of our own to the
    sender, which the feed does not give us; the ERR of a quarantined part is then only
    in ``askonce sources status``."""
    control_id = secrets.token_hex(CONTROL_ID_BYTES)
    mode = accept_ack_type(message) if message is not None else ""
    if not mode:
        result.ack = ack(message, result.code, result.error, control_id=control_id)
    else:
        committed = result.code != ACK_REJECT
        send_if_committed, send_if_not = _ACCEPT_ACK_SENT.get(mode, (True, True))
        if committed and send_if_committed:
            result.ack = ack(message, COMMIT_ACCEPT, control_id=control_id)
        elif not committed and send_if_not:
            result.ack = ack(message, COMMIT_REJECT, result.error, control_id=control_id)
    return _logged(source_id, result)


def _logged(source_id: int, result: AdtResult) -> AdtResult:
    log.info(
        "hl7v2 message",
        extra={
            "source_id": source_id,
            "event": result.event or None,
            "status": result.code,
            "resources": result.ingest.resources,
            "quarantined": result.ingest.quarantined,
        },
    )
    return result
