"""What the steward console shows, as plain values for its templates (no FastAPI).

A Patient is shown as a steward compares people: names, birth date, sex, identifiers,
phones and e-mails, addresses. The review item's evidence is the match engine's own
explanation (``mpi.model.Score.explanation``): each comparison's level and its weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.models import GoldenPatient, ReviewItem, Source, SourceRecord


@dataclass
class PersonView:
    """One Patient, flattened for a side-by-side comparison."""

    title: str
    names: list[str] = field(default_factory=list)
    birth_date: str = ""
    gender: str = ""
    identifiers: list[str] = field(default_factory=list)
    telecom: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    link: str | None = None
    status: str = ""


def _name(name: dict[str, Any]) -> str:
    if name.get("text"):
        return str(name["text"])
    parts = [*(name.get("prefix") or []), *(name.get("given") or []), name.get("family") or ""]
    parts += name.get("suffix") or []
    text = " ".join(str(p) for p in parts if p)
    return f"{text} ({name['use']})" if name.get("use") else text


def _address(address: dict[str, Any]) -> str:
    parts = [*(address.get("line") or [])]
    parts += [address.get(k) for k in ("city", "state", "postalCode", "country")]
    text = ", ".join(str(p) for p in parts if p)
    return f"{text} ({address['use']})" if address.get("use") else text


def person_view(
    resource: dict[str, Any] | None,
    title: str,
    *,
    link: str | None = None,
    status: str = "",
) -> PersonView:
    """``resource`` (a FHIR Patient) as the console shows it; an empty view if None."""
    view = PersonView(title=title, link=link, status=status)
    if not isinstance(resource, dict):
        return view
    view.names = [_name(n) for n in resource.get("name") or [] if isinstance(n, dict)]
    view.birth_date = str(resource.get("birthDate") or "")
    view.gender = str(resource.get("gender") or "")
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value"):
            system = ident.get("system") or "(no system)"
            view.identifiers.append(f"{system} | {ident['value']}")
    for point in resource.get("telecom") or []:
        if isinstance(point, dict) and point.get("value"):
            kind = point.get("system") or "contact"
            view.telecom.append(f"{kind}: {point['value']}")
    view.addresses = [_address(a) for a in resource.get("address") or [] if isinstance(a, dict)]
    return view


def record_view(session: Session, record_id: int | None, title: str) -> PersonView:
    """A source record's Patient (as its EHR sent it), titled with its source and id."""
    record = session.get(SourceRecord, record_id) if record_id else None
    if record is None:
        return person_view(None, f"{title}: record not found")
    source = session.get(Source, record.source_id)
    name = source.name if source is not None else f"source {record.source_id}"
    raw = record.raw if isinstance(record.raw, dict) else None
    resource = raw if raw and raw.get("resourceType") == "Patient" else None
    return person_view(
        resource,
        f"{title}: {name} / {record.resource_id}",
        status=record.status,
    )


def golden_view(session: Session, golden_id: str | None, title: str) -> PersonView:
    golden = session.get(GoldenPatient, golden_id) if golden_id else None
    if golden is None:
        return person_view(None, f"{title}: not found")
    return person_view(
        golden.resource,
        f"{title} {golden.id}",
        link=f"/console/golden/{golden.id}",
        status=golden.status,
    )


#: The fields a side-by-side comparison marks where the two people disagree.
COMPARED = ("names", "birth_date", "gender", "identifiers", "telecom", "addresses")


def disagreements(left: PersonView, right: PersonView) -> set[str]:
    """The fields both people have and share no value of (case and spacing ignored)."""

    def values(view: PersonView, name: str) -> set[str]:
        raw = getattr(view, name)
        items = raw if isinstance(raw, list) else [raw]
        return {" ".join(str(v).casefold().split()) for v in items if v}

    def by_system(view: PersonView) -> dict[str, set[str]]:
        systems: dict[str, set[str]] = {}
        for text in values(view, "identifiers"):
            system, _, value = text.rpartition(" | ")
            systems.setdefault(system, set()).add(value)
        return systems

    out = set()
    for name in COMPARED:
        a, b = values(left, name), values(right, name)
        if a and b and not a & b:
            out.add(name)
    # Two EHRs' record numbers always differ: identifiers disagree only where one
    # system (an SSN, a shared MRN) has different values on each side.
    a_ids, b_ids = by_system(left), by_system(right)
    out.discard("identifiers")
    if any(not a_ids[s] & b_ids[s] for s in a_ids.keys() & b_ids.keys()):
        out.add("identifiers")
    return out


@dataclass
class Comparison:
    name: str
    level: str
    weight: float


def evidence_rows(evidence: dict[str, Any] | None) -> tuple[list[Comparison], list[str]]:
    """The comparisons (strongest evidence first) and the notes and vetoes of a review
    item's or a link's explanation."""
    evidence = evidence or {}
    rows = []
    for name, detail in (evidence.get("comparisons") or {}).items():
        if isinstance(detail, dict):
            weight = float(detail.get("log2_bayes_factor") or 0.0)
            rows.append(Comparison(name, str(detail.get("level", "")), weight))
    rows.sort(key=lambda c: -abs(c.weight))
    notes = [f"note: {n}" for n in evidence.get("notes") or []]
    notes += [f"veto: {v}" for v in evidence.get("vetoes") or []]
    for key in ("withdrawn", "merged"):
        if evidence.get(key):
            notes.append(f"{key}: {evidence[key]}")
    return rows, notes


def dashboard_counts(session: Session) -> dict[str, Any]:
    """Open review items by kind, golden records by status, quarantined records by source."""
    review = dict(
        session.execute(
            select(ReviewItem.kind, func.count())
            .where(ReviewItem.status == "open")
            .group_by(ReviewItem.kind)
        ).all()
    )
    goldens = dict(
        session.execute(
            select(GoldenPatient.status, func.count()).group_by(GoldenPatient.status)
        ).all()
    )
    quarantined = dict(
        session.execute(
            select(SourceRecord.source_id, func.count())
            .where(SourceRecord.status == "quarantined")
            .group_by(SourceRecord.source_id)
        ).all()
    )
    return {"review": review, "goldens": goldens, "quarantined": quarantined}


def form_title(resource: dict[str, Any]) -> str:
    """What a submitted QuestionnaireResponse answered: its form's title (a contained
    form's), else its canonical URL."""
    reference = str(resource.get("questionnaire") or "")
    if reference.startswith("#"):
        for contained in resource.get("contained") or []:
            if isinstance(contained, dict) and contained.get("id") == reference[1:]:
                return str(contained.get("title") or contained.get("url") or "a contained form")
    return reference
