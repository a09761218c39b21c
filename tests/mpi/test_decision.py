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
    # Contact data that disagrees (another address, no phone to compare) is how a
    # namesake looks: review, not a link.
    moved = {"phone": None, "line": "77 Harbor Rd", "postal": "02110", "city": "Boston"}
    decision = _decide(moved, ("g1", {"phone": None}))
    assert decision.golden_id is None
    assert [r.kind for r in decision.reviews] == ["possible-match"]
    assert "uncorroborated" in decision.reviews[0].evidence["notes"]


LONELY = {"phone": None, "line": None, "postal": None, "city": None}
RICH = {"phone": "(212) 555-0199", "line": "9 Elm St", "postal": "10001", "city": "New York"}


def test_nothing_to_compare_links_a_complete_demographic_match_flagged() -> None:
    # No contact data, address or identifier can be compared at all: nothing contradicts
    # an exact name, birth date and gender, and no other golden record competes.
    decision = _decide(LONELY, ("g1", RICH))
    assert decision.golden_id == "g1" and decision.grade == "probable" and decision.flagged
    assert "nothing-to-compare" in decision.explanation["notes"]


def test_nothing_to_compare_needs_the_whole_demographic_match() -> None:
    for change in ({"gender": None}, {"family": "Oyelaran-Whitfeld"}, {"birth": "1970-03-15"}):
        decision = _decide({**LONELY, **change}, ("g1", RICH))
        assert decision.golden_id is None, change


def test_nothing_to_compare_with_a_rival_golden_record_goes_to_review() -> None:
    rival = {**RICH, "phone": "(212) 555-0100", "line": "1 Oak St", "postal": "10002"}
    decision = _decide(LONELY, ("g1", RICH), ("g2", rival))
    assert decision.golden_id is None
    assert {r.kind for r in decision.reviews} == {"possible-match"}


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


def test_a_replaced_given_name_does_not_block_a_merge_the_incoming_record_explains() -> None:
    # g1 holds a record whose given name was replaced at registration; it looks like a
    # twin of g2's record. The incoming record shares g1's e-mail (same person) and is
    # g2's record too: each member is one the other side would take in, so they merge.
    slip = {"given": "Zachary", "email": "rob@example.com"}
    decision = _decide({"email": "rob@example.com"}, ("g1", slip), ("g2", {}))
    assert decision.golden_id in ("g1", "g2") and len(decision.merge) == 1
    assert not decision.reviews


def test_a_hard_conflict_between_members_blocks_a_merge() -> None:
    decision = _decide(
        {"email": "rob@example.com"},
        ("g1", {"ssn": "512-34-6789"}),
        ("g2", {"email": "rob@example.com", "ssn": "512-34-6790"}),
    )
    assert decision.golden_id is not None and decision.merge == []
    assert [r.kind for r in decision.reviews] == ["duplicate-golden"]


def test_an_ssn_typo_with_everything_else_matching_links() -> None:
    decision = _decide({"ssn": "512-34-6798"}, ("g1", {"ssn": "512-34-6789"}))
    assert decision.golden_id == "g1" and not decision.reviews
    twin = _decide(
        {"given": "Rebecca", "gender": "female", "ssn": "512-34-6788"},
        ("g1", {"given": "Jennifer", "gender": "female", "ssn": "512-34-6789"}),
    )
    assert twin.golden_id is None and "conflicting-ssn" in twin.reviews[0].reason


def test_equal_scores_rank_by_the_oldest_member_not_the_golden_id() -> None:
    # Two golden records with identical members score the same; golden ids are random
    # UUIDs, so the tie goes to the record stored first, whatever the ids' order.
    for older, newer in (("g-zzz", "g-aaa"), ("g-aaa", "g-zzz")):
        members = [Member(7, newer, features()), Member(3, older, features())]
        candidates = score_candidates(MODEL, SETTINGS, features(), members)
        assert candidates[0].score.total == candidates[1].score.total
        assert [c.golden_id for c in candidates] == [older, newer]
        # The same ranking whatever order the members were read in.
        reversed_order = score_candidates(MODEL, SETTINGS, features(), members[::-1])
        assert [c.golden_id for c in reversed_order] == [older, newer]


def test_equal_best_scores_prefer_the_golden_record_whose_members_agree_more() -> None:
    # Both golden records hold an exact copy of the incoming record; the older one also
    # holds a different person's record (a namesake filed there earlier).
    namesake = {"given": "Margaret", "birth": "1961-09-30", "phone": "(617) 555-0142"}
    members = [
        Member(1, "g-mixed", features()),
        Member(2, "g-mixed", features(**namesake)),
        Member(5, "g-clean", features()),
    ]
    candidates = score_candidates(MODEL, SETTINGS, features(), members)
    assert candidates[0].score.total == candidates[1].score.total
    assert [c.golden_id for c in candidates] == ["g-clean", "g-mixed"]
