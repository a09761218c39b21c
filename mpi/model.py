"""The match model: m and u probabilities per comparison level, and term frequencies.

Plain JSON with a version, stored in table ``match_model`` (one row active), so that every
decision can be reproduced and explained later. The weight of a comparison at a level is
``log2(m / u)`` (a log2 Bayes factor); the weight of an exact name agreement uses the
frequency of that name instead of ``u`` ("Smith" counts for less than "Oyelaran-Whitfield").
See https://www.robinlinacre.com/maths_of_fellegi_sunter/ and
https://www.robinlinacre.com/maths_of_fellegi_sunter/#term-frequency-adjustments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mpi.comparisons import COMPARISONS, Comparison, NamePair, compare_records
from mpi.features import MatchFeatures

#: Format of the JSON; bumped when its shape changes.
MODEL_FORMAT = 1
#: Version string of the built-in model (priors, before any training).
DEFAULT_MODEL_VERSION = "default-1"
#: No probability is ever estimated below this (keeps weights finite).
MIN_PROBABILITY = 1e-7
#: The term frequency used for a name never seen in training is at least this.
MIN_TERM_FREQUENCY = 1e-5


@dataclass(slots=True)
class LevelParams:
    """m and u of each level of one comparison."""

    levels: list[str]
    m: list[float]
    u: list[float]

    def weights(self) -> list[float]:
        return [
            math.log2(max(m, MIN_PROBABILITY) / max(u, MIN_PROBABILITY))
            for m, u in zip(self.m, self.u, strict=True)
        ]


@dataclass(slots=True)
class MatchModel:
    """A Fellegi-Sunter model as plain data."""

    version: str = DEFAULT_MODEL_VERSION
    comparisons: dict[str, LevelParams] = field(default_factory=dict)
    #: Relative frequency of each name value, per term-frequency comparison.
    term_frequencies: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Frequency assumed for a name absent from ``term_frequencies`` (1 / records seen).
    default_term_frequency: float = MIN_TERM_FREQUENCY
    #: Estimated share of candidate pairs that are matches (from EM), for reporting.
    match_share: float | None = None
    #: Per look-alike pattern ("twin", "jr-sr"): stratum pairs seen, share showing the
    #: pattern, share of true duplicates showing it (see mpi.guards.supported_lookalikes).
    #: Empty (untrained): every look-alike guard applies.
    lookalike_rates: dict[str, dict[str, float]] = field(default_factory=dict)
    trained_on: int = 0
    _weights: dict[str, list[float]] = field(default_factory=dict, repr=False)
    #: Per comparison in :data:`COMPARISONS` order: its name, level weights, and the
    #: comparison itself when its exact level is adjusted by term frequency.
    _plan: tuple[tuple[str, list[float], Comparison | None], ...] = field(
        default=(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for comparison in COMPARISONS:
            if comparison.name not in self.comparisons:
                self.comparisons[comparison.name] = LevelParams(
                    list(comparison.levels), list(comparison.default_m), list(comparison.default_u)
                )
        self._weights = {name: p.weights() for name, p in self.comparisons.items()}
        # A comparison without a frequency table (the untrained model has none) weighs its
        # exact level like any other: level_weight would look the table up per pair.
        self._plan = tuple(
            (
                c.name,
                self._weights[c.name],
                c if c.term_frequency and c.name in self.term_frequencies else None,
            )
            for c in COMPARISONS
        )

    @classmethod
    def default(cls) -> MatchModel:
        """The untrained model: the priors of each comparison."""
        return cls()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "version": self.version,
            "comparisons": {
                name: {"levels": p.levels, "m": p.m, "u": p.u}
                for name, p in self.comparisons.items()
            },
            "term_frequencies": self.term_frequencies,
            "default_term_frequency": self.default_term_frequency,
            "match_share": self.match_share,
            "lookalike_rates": self.lookalike_rates,
            "trained_on": self.trained_on,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MatchModel:
        known = {c.name: c.levels for c in COMPARISONS}
        comparisons = {
            name: LevelParams(list(p["levels"]), list(p["m"]), list(p["u"]))
            for name, p in data.get("comparisons", {}).items()
            if tuple(p["levels"]) == known.get(name)  # a changed comparison falls back to priors
        }
        return cls(
            version=str(data.get("version", DEFAULT_MODEL_VERSION)),
            comparisons=comparisons,
            term_frequencies=dict(data.get("term_frequencies") or {}),
            default_term_frequency=float(data.get("default_term_frequency") or MIN_TERM_FREQUENCY),
            match_share=data.get("match_share"),
            lookalike_rates={
                str(k): {str(n): float(x) for n, x in v.items()}
                for k, v in (data.get("lookalike_rates") or {}).items()
            },
            trained_on=int(data.get("trained_on") or 0),
        )

    def level_weight(self, comparison: str, level: int, tf_value: str | None = None) -> float:
        """The log2 Bayes factor of ``comparison`` agreeing at ``level``."""
        if level == 0 and tf_value is not None:
            table = self.term_frequencies.get(comparison)
            if table is not None:
                params = self.comparisons[comparison]
                frequency = max(
                    table.get(tf_value, self.default_term_frequency), MIN_TERM_FREQUENCY
                )
                return math.log2(max(params.m[0], MIN_PROBABILITY) / frequency)
        return self._weights[comparison][level]

    def score_levels(
        self, levels: list[int | None], names: NamePair | None
    ) -> tuple[float, dict[str, float]]:
        """Total weight and per-comparison contributions of a level vector."""
        total = 0.0
        contributions: dict[str, float] = {}
        for (name, weights, tf), level in zip(self._plan, levels, strict=True):
            if level is None:
                continue
            if level == 0 and tf is not None:
                weight = self.level_weight(name, level, tf.tf_value(names))
            else:
                weight = weights[level]
            contributions[name] = weight
            total += weight
        return total, contributions

    def score(self, a: MatchFeatures, b: MatchFeatures) -> Score:
        """Score one pair of records."""
        levels, names = compare_records(a, b)
        total, contributions = self.score_levels(levels, names)
        return Score(total, levels, contributions)


@dataclass(slots=True)
class Score:
    """The score of one pair, and why: the level and log2 weight of each comparison."""

    total: float
    levels: list[int | None]
    contributions: dict[str, float]

    def explanation(self) -> dict[str, Any]:
        """Per-comparison level names and log2 Bayes factors, for links and review items."""
        out: dict[str, Any] = {}
        for comparison, level in zip(COMPARISONS, self.levels, strict=True):
            if level is None:
                continue
            out[comparison.name] = {
                "level": comparison.levels[level],
                "log2_bayes_factor": round(self.contributions[comparison.name], 3),
            }
        return {"score": round(self.total, 3), "comparisons": out}
