"""SMART on FHIR scopes: which interactions a token allows.

Grammar (`SMART App Launch 2.x, scopes
<https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html>`_):
``<context>/<resourceType|*>.<permissions>`` where v2 permissions are any of
``c r u d s`` in that order (``system/Patient.rs``) and the v1 forms ``read``
(= ``rs``), ``write`` (= ``cud``) and ``*`` (= ``cruds``) are still accepted.
Backend consumers act for the system, so only the ``system/`` and ``user/``
contexts grant access; ``patient/`` scopes need a launch context this server
does not provide and grant nothing.

The admin API is not a FHIR resource: it needs the separate scope
:data:`ADMIN_SCOPE`, which no SMART wildcard such as ``system/*.cruds`` includes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Grants the whole ``/admin`` API (sources, runs, review queue, consumers).
ADMIN_SCOPE = "askonce.admin"
#: Contexts that grant access to a backend consumer.
GRANTING_CONTEXTS = frozenset({"system", "user"})
V2_ORDER = "cruds"
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}

_SMART = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\."
    r"(?P<perm>read|write|\*|c?r?u?d?s?)(?:\?.*)?$"
)


class InvalidScopeError(ValueError):
    """A scope string that is neither a SMART scope nor the admin scope."""


@dataclass(frozen=True, slots=True)
class Scope:
    context: str
    resource_type: str
    permissions: frozenset[str]

    def allows(self, resource_type: str, permission: str) -> bool:
        return (
            self.context in GRANTING_CONTEXTS
            and self.resource_type in ("*", resource_type)
            and permission in self.permissions
        )


def parse_scope(value: str) -> Scope | None:
    """A SMART scope, or None for the admin scope and the other non-resource scopes."""
    if value in (ADMIN_SCOPE, "openid", "fhirUser", "offline_access", "online_access"):
        return None
    match = _SMART.match(value)
    if match is None or not match.group("perm"):
        raise InvalidScopeError(f"not a SMART scope: {value!r}")
    perm = match.group("perm")
    permissions = frozenset(V1_PERMISSIONS.get(perm, perm))
    return Scope(match.group("context"), match.group("type"), permissions)


def validate_scopes(values: Iterable[str]) -> list[str]:
    """The scopes, de-duplicated in order; raises :class:`InvalidScopeError` on a bad one."""
    seen: list[str] = []
    for value in values:
        parse_scope(value)
        if value not in seen:
            seen.append(value)
    return seen


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """The scopes a token carries, ready to answer "may it do this?"."""

    raw: tuple[str, ...]
    smart: tuple[Scope, ...]

    @classmethod
    def of(cls, values: Iterable[str]) -> ScopeSet:
        raw = tuple(validate_scopes(values))
        return cls(raw, tuple(s for s in (parse_scope(v) for v in raw) if s is not None))

    def allows(self, resource_type: str, permission: str) -> bool:
        return any(s.allows(resource_type, permission) for s in self.smart)

    @property
    def admin(self) -> bool:
        return ADMIN_SCOPE in self.raw
