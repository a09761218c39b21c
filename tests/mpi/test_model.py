"""The model: weights from m/u, term frequencies, JSON round trip, training, batch quality."""

from __future__ import annotations

import json
import random

import pytest

from fhir_mapping import parse_patient
from mpi import MatchModel, MatchSettings, evaluate_clusters, resolve_batch, train_model
from mpi.decision import Member, score_candidates
from mpi.features import extract_features
from mpi.guards import LOOKALIKE_REASONS, supported_lookalikes
from mpi.train import estimate_u_using_random_sampling
from tests.mpi.helpers import features
from tools.ehrgen import generate

FAST = MatchSettings(u_sample_pairs=20_000)


@pytest.fixture(scope="module")
def generated() -> tuple[list, list[str], dict[int, list[str]]]:
    data = generate(400, seed=3)
    truth = {(t.source, t.resource_id): t for t in data.truth}
    feats, persons, tags = [], [], {}
    for source, resources in data.patients_by_source.items():
        for resource in resources:
            row = truth[(source, resource["id"])]
            tags[len(feats)] = row.tags
            feats.append(extract_features(parse_patient(resource)))
            persons.append(row.person_id)
    return feats, persons, tags


@pytest.fixture(scope="module")
def trained(generated: tuple) -> MatchModel:
    return train_model(generated[0], FAST)


def test_explanation_lists_each_comparison_with_its_weight() -> None:
    model = MatchModel.default()
    score = model.score(features(), features(given="Bob", phone=None))
    explanation = score.explanation()
    assert explanation["comparisons"]["given"]["level"] == "nickname"
    assert "phone" not in explanation["comparisons"]  # missing on one side: no evidence
    total = sum(c["log2_bayes_factor"] for c in explanation["comparisons"].values())
    assert total == pytest.approx(explanation["score"], abs=0.01)


def test_common_names_count_for_less_than_rare_ones() -> None:
    model = MatchModel(term_frequencies={"family": {"smith": 0.01, "oyelaran whitfield": 0.00001}})
    common = model.score(features(family="Smith"), features(family="Smith"))
    rare = model.score(features(), features())
    assert rare.contributions["family"] > common.contributions["family"] + 5


def test_model_round_trips_through_json(trained: MatchModel) -> None:
    again = MatchModel.from_json(json.loads(json.dumps(trained.to_json())))
    a, b = features(), features(given="Bob")
    assert again.score(a, b).total == pytest.approx(trained.score(a, b).total)
    assert again.version == trained.version


def test_u_is_small_for_rare_agreement(generated: tuple) -> None:
    u = estimate_u_using_random_sampling(generated[0], 20_000, seed=1)
    assert u["birth_date"][0] < 0.01  # two random people rarely share a birth date
    assert u["gender"][0] > 0.3


def test_em_learns_that_a_matching_birth_date_is_strong_evidence(trained: MatchModel) -> None:
    params = trained.comparisons["birth_date"]
    assert params.m[0] > 0.7
    assert params.weights()[0] > 8
    assert params.weights()[-1] < 0


def test_batch_resolution_of_generated_duplicates(generated: tuple, trained: MatchModel) -> None:
    feats, persons, tags = generated
    result = resolve_batch(feats, trained, MatchSettings())
    evaluation = evaluate_clusters(
        dict(enumerate(result.golden_ids)), dict(enumerate(persons)), tags
    )
    assert evaluation.precision >= 0.995
    assert evaluation.recall >= 0.9
    assert evaluation.merges_by_tag == {"twin": 0, "jr-sr": 0}


def test_steward_labels_enter_training(generated: tuple) -> None:
    feats = generated[0]
    model = train_model(feats, FAST, labels=[(0, 1, False)], seed=2)
    assert model.trained_on == len(feats)


def test_evaluate_counts_overlays_and_splits() -> None:
    golden = {"a": "g1", "b": "g1", "c": "g1", "d": "g2", "e": "g3"}
    person = {"a": "p1", "b": "p1", "c": "p2", "d": "p2", "e": "p3"}
    evaluation = evaluate_clusters(golden, person)
    assert evaluation.true_positive_pairs == 1
    assert evaluation.predicted_pairs == 3
    assert evaluation.true_pairs == 2
    assert evaluation.overlays == 1 and evaluation.splits == 1


def test_training_keeps_the_twin_guard_where_the_data_holds_twins(trained: MatchModel) -> None:
    rates = trained.lookalike_rates["twin"]
    assert rates["observed"] > 2 * rates["duplicates"]
    assert "twin" in supported_lookalikes(trained.lookalike_rates)


def _febrl_like(people: int, seed: int) -> list:
    """Two records per person sharing an SSN; one duplicate in six has its given name
    replaced (as Febrl does), and nobody has a twin."""
    rng = random.Random(seed)
    letters = "bcdfghklmnprstvz"
    out = []
    for n in range(people):
        family = "".join(rng.choice(letters) + rng.choice("aeiou") for _ in range(4))
        birth = f"19{rng.randint(10, 99)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        ssn = f"{rng.randint(100, 899)}-{rng.randint(10, 99)}-{n + 1000:04d}"
        given = rng.choice(["Anna", "Maria", "Peter", "Jonas", "Laura", "Oskar", "Ida"])
        other = rng.choice(["Felix", "Greta", "Hugo", "Emil", "Rosa"]) if n % 6 == 0 else given
        for first in (given, other):
            out.append(
                features(given=first, family=family, birth=birth, ssn=ssn, phone=None, line=None)
            )
    return out


def test_training_drops_the_twin_guard_where_replaced_given_names_are_errors() -> None:
    model = train_model(_febrl_like(300, seed=5), FAST)
    rates = model.lookalike_rates["twin"]
    assert rates["pairs"] >= 100 and rates["observed"] <= 2 * rates["duplicates"]
    assert "twin" not in supported_lookalikes(model.lookalike_rates)
    assert MatchModel.from_json(model.to_json()).lookalike_rates == model.lookalike_rates


def test_an_operator_can_keep_every_lookalike_guard_whatever_training_saw() -> None:
    model = train_model(_febrl_like(300, seed=5), FAST)
    jennifer = features(given="Jennifer", gender="female")
    rebecca = Member(1, "g-rebecca", features(given="Rebecca", gender="female"))
    (learned,) = score_candidates(model, MatchSettings(), jennifer, [rebecca])
    assert "twin" not in learned.lookalikes
    strict = MatchSettings(lookalike_guards_from_training=False)
    (kept,) = score_candidates(model, strict, jennifer, [rebecca])
    assert kept.lookalikes == LOOKALIKE_REASONS
