"""Opaque, tamper-evident page cursors for ``Bundle.link[next]``.

A cursor is the keyset position after the last entry of a page (the sort values
and the id), JSON-encoded, base64url'd and signed with HMAC-SHA256, so a client
can follow it verbatim but not forge one. Keyset paging is stable while data
changes: a record inserted or updated between two pages never shifts the rest.
See https://hl7.org/fhir/R4/http.html#paging.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from gateway.operations.params import fail

#: Bytes of the HMAC kept in a cursor; enough to make forging impractical.
SIGNATURE_BYTES = 16
CURSOR_PARAM = "_cursor"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_cursor(secret: str, position: dict[str, Any]) -> str:
    payload = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:SIGNATURE_BYTES]
    return f"{_b64(payload)}.{_b64(mac)}"


def decode_cursor(secret: str, token: str) -> dict[str, Any]:
    """The position in ``token``; 400 when it was altered or is not one of ours."""
    try:
        payload_text, mac_text = token.split(".")
        payload = _unb64(payload_text)
        expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:SIGNATURE_BYTES]
        if not hmac.compare_digest(expected, _unb64(mac_text)):
            raise ValueError("signature")
        position = json.loads(payload)
        if not isinstance(position, dict):
            raise ValueError("shape")
    except (ValueError, TypeError) as exc:
        raise fail(
            "The paging cursor is invalid; follow the next link as given.", CURSOR_PARAM
        ) from exc
    return position
