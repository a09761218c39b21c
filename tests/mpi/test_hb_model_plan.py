"""The model's scoring plan weighs an exact name by its frequency only where the model
has a frequency table for that comparison; elsewhere by its plain level weight."""

from __future__ import annotations

import pytest

from mpi import MatchModel
from tests.mpi.helpers import features


@pytest.mark.parametrize(
    "tables",
    [{}, {"family": {"smith": 0.01}}, {"given": {"robert": 0.02}}, {"given": {}, "family": {}}],
)
def test_each_contribution_is_its_level_weight(tables: dict[str, dict[str, float]]) -> None:
    model = MatchModel(term_frequencies=tables, default_term_frequency=0.003)
    pairs = [
        (features(family="Smith"), features(family="Smith")),
        (features(), features()),
        (features(given="Bob"), features(given="Robert", phone=None)),
        (features(given="Robert", family="Smith"), features(given="Smith", family="Robert")),
    ]
    for a, b in pairs:
        score = model.score(a, b)
        names = a.names[0]
        for name, weight in score.contributions.items():
            level = score.levels[[c for c in model.comparisons].index(name)]
            value = {"given": names.given_first, "family": names.family}.get(name)
            assert weight == model.level_weight(name, level, value)  # type: ignore[arg-type]
        assert score.total == pytest.approx(sum(score.contributions.values()))


def test_a_frequency_table_changes_only_its_own_comparison() -> None:
    plain = MatchModel()
    family_only = MatchModel(term_frequencies={"family": {"smith": 0.5}})
    a, b = features(family="Smith"), features(family="Smith")
    before, after = plain.score(a, b), family_only.score(a, b)
    assert after.contributions["family"] < before.contributions["family"]
    assert after.contributions["given"] == before.contributions["given"]
