"""The decision: grades, corroboration, vetoes, transitivity, steward decisions."""

from __future__ import annotations

from mpi import MatchModel, MatchSettings
from mpi.decision import Member, decide, score_candidates
from tests.mpi.helpers import features

SETTINGS = MatchSettings()
MODEL = MatchModel.default()


def _decide(
    incoming: dict, *others: tuple[str, dict], settings: MatchSettings = SETTINGS, **kwargs: object
):
    members = [Member(n, golden, features(**f)) for n, (golden, f) in enumerate(others)]
    candidates = score_candidates(MODEL, settings, features(**incoming), members)
    return decide(candidates, settings, members=members, **kwargs)  # type: ignore[arg-type]


def test_certain_match_links_with_its_explanation() -> None:
    decision = _decide({"given": "Bob"}, ("g1", {}))
    assert decision.golden_id == "g1" and decision.grade == "certain"
    assert decision.explanation["comparisons"]["given"]["level"] == "nickname"
    assert not decision.reviews


def test_name_and_birth_date_alone_are_not_enough() -> None:
    lonely = {"phone": None, "line": None, "postal": None, "city": None}
    decision = _decide(
        lonely,
        (
            "g1",
            {"phone": "(212) 555-0199", "line": "9 Elm St", "postal": "10001", "city": "New York"},
        ),
    )
    assert decision.golden_id is None
    assert [r.kind for r in decision.reviews] == ["possible-match"]


def test_vetoed_pair_goes_to_review_with_the_reason() -> None:
    decision = _decide(
        {"given": "Rebecca", "gender": "female"}, ("g1", {"given": "Jennifer", "gender": "female"})
    )
    assert decision.golden_id is None
    [review] = decision.reviews
    assert review.kind == "vetoed" and "twin" in review.reason


def test_a_look_alike_veto_needs_every_linkable_member() -> None:
    # One member carries a replaced given name (a registration error); the record is
    # the same person as the others, so the look-alike in one member does not veto.
    mixed = _decide({}, ("g1", {}), ("g1", {"given": "Michael"}))
    assert mixed.golden_id == "g1" and not mixed.reviews
    # A twin looks alike against every record of the sibling: vetoed.
    twin = _decide(
        {"given": "Rebecca", "gender": "female"},
        ("g1", {"given": "Jennifer", "gender": "female"}),
        ("g1", {"given": "Jenny", "gender": "female"}),
    )
    assert twin.golden_id is None and "twin" in twin.reviews[0].reason


def test_a_hard_conflict_with_any_member_vetoes() -> None:
    decision = _decide(
        {"ssn": "512-34-6789"}, ("g1", {}), ("g1", {"ssn": "512-34-6790", "email": "x@y.org"})
    )
    assert decision.golden_id is None and "conflicting-ssn" in decision.reviews[0].reason


def test_two_certain_golden_records_are_merged() -> None:
    decision = _decide(
        {"email": "rob@example.com"}, ("g1", {}), ("g2", {"email": "rob@example.com"})
    )
    assert decision.golden_id in ("g1", "g2")
    assert len(decision.merge) == 1 and not decision.reviews


def test_a_probable_second_golden_record_only_opens_a_review() -> None:
    strong = {"email": "rob@example.com", "ssn": "512-34-6789"}
    weaker = {"given": "Rob", "line": "99 Oak Ave", "postal": "94612", "phone": None}
    strict = MatchSettings(certain=40, probable=12, possible=6)  # the weaker pair is probable
    decision = _decide(strong, ("g1", strong), ("g2", weaker), settings=strict)
    assert decision.golden_id == "g1" and decision.merge == []
    [review] = decision.reviews
    assert review.kind == "duplicate-golden" and review.other_golden_id == "g2"


def test_steward_decisions_win() -> None:
    assert _decide({}, ("g1", {}), no_match={"g1"}).golden_id is None
    manual = _decide({"given": "Mildred"}, ("g1", {}), manual_match="g1")
    assert manual.golden_id == "g1" and manual.method == "MANUAL"
