"""Survivorship: the golden record built from the source records linked to it.

Each field follows its own rules (``MatchSettings.survivorship``), tried in order:

- ``confirmed``: a value from a source marked ``patient_confirmed`` (the patient portal)
  beats everything, for contact data;
- ``trust``: the source's ``trust_rank`` (higher wins);
- ``recency``: the record's ``meta.lastUpdated`` (or when askonce received it);
- ``completeness``: a full birth date beats a year, a name with given and family beats one
  without.

Names, identifiers, telecom and addresses are kept as ranked lists (best first, duplicates
folded, periods kept as the sources gave them) rather than overwritten. Every golden
field records its provenance: the source record, the rule that chose it, and when the
value was observed (https://hl7.org/fhir/R4/provenance.html is rendered from this).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from fhir_mapping import GoldenLink, GoldenRecord, SourcePatient

T = TypeVar("T")
#: Order of scalar fields taken from the best-ranked member that has them.
SCALAR_FIELDS = ("birthDate", "gender")


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One linked source record, with what survivorship needs to rank it."""

    record_id: int
    patient: SourcePatient
    trust_rank: int
    observed_at: datetime | None
    confirmed: bool = False


@dataclass(frozen=True, slots=True)
class ProvenanceEntry:
    field: str
    value: Any
    record_id: int
    rule: str
    observed_at: datetime | None


def _completeness(member: MemberRecord, field: str) -> int:
    p = member.patient
    if field == "birthDate":
        return len(p.birth_date or "")
    if field == "name":
        return sum(bool(n.family) + bool(n.given) for n in p.names)
    return 0


def _rule_value(member: MemberRecord, field: str, rule: str) -> Any:
    """What ``rule`` ranks ``member`` by for ``field`` (lower first); :data:`_NO_VALUE` for a
    rule that does not rank."""
    if rule == "confirmed":
        return not member.confirmed
    if rule == "trust":
        return -member.trust_rank
    if rule == "recency":
        return -(member.observed_at.timestamp() if member.observed_at else 0.0)
    if rule == "completeness":
        return -_completeness(member, field)
    return _NO_VALUE


#: :func:`_rule_value` of a rule name that ranks nothing.
_NO_VALUE = object()


def _rank_key(member: MemberRecord, field: str, rules: Sequence[str]) -> tuple[Any, ...]:
    key = [value for rule in rules if (value := _rule_value(member, field, rule)) is not _NO_VALUE]
    key.append(member.record_id)  # stable: the older record first on a tie
    return tuple(key)


def _deciding_rule(ranked: Sequence[MemberRecord], field: str, rules: Sequence[str]) -> str:
    """The first rule that tells the best member from the runner-up ("only" if alone)."""
    if len(ranked) < 2:
        return "only-source"
    first, second = ranked[0], ranked[1]
    for rule in rules:
        a, b = _rule_value(first, field, rule), _rule_value(second, field, rule)
        if a is _NO_VALUE:  # ranks by record id alone, which always differs
            a, b = first.record_id, second.record_id
        if a != b:
            return rule
    return "oldest-record"


def _union(
    ranked: Sequence[MemberRecord],
    values: Callable[[SourcePatient], Sequence[T]],
    identity: Callable[[T], Hashable],
) -> list[tuple[T, MemberRecord]]:
    seen: set[Hashable] = set()
    out: list[tuple[T, MemberRecord]] = []
    for member in ranked:
        for value in values(member.patient):
            key = identity(value)
            if key in seen:
                continue
            seen.add(key)
            out.append((value, member))
    return out


def build_golden(
    golden_id: str,
    members: Sequence[MemberRecord],
    rules: dict[str, tuple[str, ...]],
    *,
    links: Sequence[GoldenLink] = (),
) -> tuple[GoldenRecord, list[ProvenanceEntry]]:
    """The golden record of ``members`` and the provenance of each of its fields."""
    provenance: list[ProvenanceEntry] = []

    # Fields ranked by the same rules share one ranking unless completeness, which
    # depends on the field, is among them (7 sorts of the members become 4); a lone
    # member needs none. Rank keys were ~1/3 of build_golden's time.
    rankings: dict[tuple[tuple[str, ...], str | None], tuple[list[MemberRecord], str]] = {}

    def ranked_for(field: str) -> tuple[list[MemberRecord], str]:
        order = rules.get(field, ("trust", "recency"))
        shared = (tuple(order), field if "completeness" in order else None)
        found = rankings.get(shared)
        if found is None:
            if len(members) < 2:
                found = (list(members), "only-source")
            else:
                ranked = sorted(members, key=lambda m: _rank_key(m, field, order))
                found = (ranked, _deciding_rule(ranked, field, order))
            rankings[shared] = found
        return found

    golden = GoldenRecord(id=golden_id, links=list(links))
    ranked, rule = ranked_for("name")
    for name, member in _union(
        ranked, lambda p: p.names, lambda n: (n.family_folded, tuple(n.given_folded), n.use)
    ):
        golden.names.append(name)
        provenance.append(
            ProvenanceEntry(
                "name",
                {"family": name.family, "given": name.given},
                member.record_id,
                rule,
                member.observed_at,
            )
        )
    for field in SCALAR_FIELDS:
        ranked, rule = ranked_for(field)
        attr = "birth_date" if field == "birthDate" else "gender"
        chosen = next((m for m in ranked if getattr(m.patient, attr)), None)
        if chosen is not None:
            setattr(golden, attr, getattr(chosen.patient, attr))
            provenance.append(
                ProvenanceEntry(
                    field, getattr(chosen.patient, attr), chosen.record_id, rule, chosen.observed_at
                )
            )
    ranked, rule = ranked_for("identifier")
    for ident, member in _union(
        ranked, lambda p: p.identifiers, lambda i: (i.system, i.value_normalized or i.value)
    ):
        golden.identifiers.append(ident)
        provenance.append(
            ProvenanceEntry(
                "identifier", {"system": ident.system}, member.record_id, rule, member.observed_at
            )
        )
    ranked, rule = ranked_for("telecom")
    for point, member in _union(
        ranked, lambda p: p.telecom, lambda t: (t.system, t.value_normalized or t.value)
    ):
        golden.telecom.append(point)
        provenance.append(
            ProvenanceEntry(
                "telecom", {"system": point.system}, member.record_id, rule, member.observed_at
            )
        )
    ranked, rule = ranked_for("address")
    for address, member in _union(
        ranked,
        lambda p: p.addresses,
        lambda a: (a.line_normalized, a.postal_normalized, a.city_folded),
    ):
        golden.addresses.append(address)
        provenance.append(
            ProvenanceEntry(
                "address", {"use": address.use}, member.record_id, rule, member.observed_at
            )
        )
    ranked, rule = ranked_for("other")
    best = ranked[0] if ranked else None
    if best is not None:
        p = best.patient
        golden.languages = list(p.languages)
        golden.race, golden.ethnicity, golden.birth_sex = p.race, p.ethnicity, p.birth_sex
        dead = next((m for m in ranked if m.patient.deceased or m.patient.deceased_datetime), None)
        if dead is not None:
            golden.deceased = True
            golden.deceased_datetime = dead.patient.deceased_datetime
            provenance.append(
                ProvenanceEntry("deceased", True, dead.record_id, rule, dead.observed_at)
            )
    return golden, provenance
