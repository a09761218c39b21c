"""Training: u by random sampling, m by expectation-maximisation, names' term frequencies.

The method follows Splink (https://moj-analytical-services.github.io/splink/topic_guides/
training/estimating_model_parameters.html): ``u`` is the chance that two *random* records
agree at a level, so it is counted on random pairs; ``m`` is estimated by EM on the
candidate pairs that blocking produces, with ``u`` held fixed. Pairs a steward has
decided enter EM as labels (probability 1 or 0) instead of estimates.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import numpy as np

from mpi.blocking import MemoryBlockIndex, block_keys
from mpi.comparisons import COMPARISONS, compare_records
from mpi.features import MatchFeatures
from mpi.guards import lookalike_patterns
from mpi.model import MIN_PROBABILITY, LevelParams, MatchModel
from mpi.settings import MatchSettings

#: Pseudo-count added to every level when counting u (a level never seen is not impossible).
U_PSEUDO_COUNT = 0.5
#: At most this many blocked pairs enter EM (sampled when there are more).
MAX_EM_PAIRS = 10_000
#: Share of matches among blocked pairs that EM starts from.
INITIAL_MATCH_SHARE = 0.05
#: Names seen fewer times than this keep the default term frequency (keeps the JSON small).
MIN_TF_COUNT = 2
NULL_LEVEL = -1

LabelledPair = tuple[int, int, bool]
#: Block-key kinds whose pairs make the look-alike strata (family name + birth year,
#: family name + postal code, given + family name).
LOOKALIKE_STRATUM_KINDS = frozenset({"fy", "fp", "gf"})

#: EM sessions, after Splink: the pairs of each session come from some block-key kinds,
#: and the comparisons on the fields behind those keys keep their m (held out). Pairs
#: found by name and birth date teach what contact data and identifiers do; pairs found by
#: identifiers teach what names, birth dates and addresses do. Training on all pairs at
#: once lets EM mistake "same household" for "same person"; so would pairs found by a
#: shared phone or e-mail (twins and spouses share them), which would teach EM that a
#: different given name or birth date is common among duplicates.
EM_SESSIONS: tuple[tuple[frozenset[str], frozenset[str]], ...] = (
    (frozenset({"gd", "sw"}), frozenset({"given", "birth_date"})),
    (frozenset({"id", "ih"}), frozenset({"ssn", "identifier", "phone", "email"})),
)


def _level_matrix(
    features: Sequence[MatchFeatures], pairs: Sequence[tuple[int, int]]
) -> np.ndarray:
    matrix = np.full((len(pairs), len(COMPARISONS)), NULL_LEVEL, dtype=np.int8)
    for row, (i, j) in enumerate(pairs):
        levels, _ = compare_records(features[i], features[j])
        matrix[row] = [NULL_LEVEL if level is None else level for level in levels]
    return matrix


def _systems(ids: frozenset[tuple[str, str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for system, value in ids:
        out.setdefault(system, set()).add(value)
    return out


def silver_label(a: MatchFeatures, b: MatchFeatures) -> float:
    """1 when two records share an SSN or a strong identifier, 0 when those conflict, else
    NaN (unknown). Lifelong identifiers anchor EM: without them it may learn "same
    household" (shared phone, address and family name) instead of "same person"."""
    if (a.ssns & b.ssns) or (a.strong_ids & b.strong_ids):
        return 1.0
    if a.ssns and b.ssns:
        return 0.0
    systems_a, systems_b = _systems(a.strong_ids), _systems(b.strong_ids)
    if any(not (systems_a[s] & systems_b[s]) for s in systems_a.keys() & systems_b):
        return 0.0
    return math.nan


def estimate_u_using_random_sampling(
    features: Sequence[MatchFeatures],
    pairs: int,
    *,
    seed: int = 0,
    base: MatchModel | None = None,
) -> dict[str, list[float]]:
    """u of every level: how often two random records agree at it.

    A comparison that no sampled pair could evaluate keeps the ``u`` of ``base``.
    """
    start = base or MatchModel.default()
    rng = random.Random(seed)
    n = len(features)
    sample = [
        (i, j) for i, j in ((rng.randrange(n), rng.randrange(n)) for _ in range(pairs)) if i != j
    ]
    matrix = _level_matrix(features, sample) if n > 1 else np.zeros((0, len(COMPARISONS)))
    out: dict[str, list[float]] = {}
    for column, comparison in enumerate(COMPARISONS):
        levels = matrix[:, column]
        counts = np.bincount(levels[levels >= 0].astype(np.int64), minlength=len(comparison.levels))
        if not counts.sum():
            out[comparison.name] = list(start.comparisons[comparison.name].u)
            continue
        total = counts.sum() + U_PSEUDO_COUNT * len(comparison.levels)
        out[comparison.name] = [(c + U_PSEUDO_COUNT) / total for c in counts.tolist()]
    return out


def _blocked_pairs(
    keys: Sequence[list[str]],
    settings: MatchSettings,
    rng: random.Random,
    kinds: frozenset[str],
) -> list[tuple[int, int]]:
    index = MemoryBlockIndex(settings.max_block_size)
    for record, record_keys in enumerate(keys):
        index.add(record, [k for k in record_keys if k.split(":", 1)[0] in kinds])
    pairs: set[tuple[int, int]] = set()
    for members in index.members.values():
        if len(members) < 2 or len(members) > settings.max_block_size:
            continue
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = members[x], members[y]
                if i != j:
                    pairs.add((min(i, j), max(i, j)))
    ordered = sorted(pairs)
    if len(ordered) > MAX_EM_PAIRS:
        ordered = rng.sample(ordered, MAX_EM_PAIRS)
    return ordered


def match_probability(
    matrix: np.ndarray,
    u: dict[str, list[float]],
    m: dict[str, list[float]] | dict[str, np.ndarray],
    share: float,
) -> np.ndarray:
    """The probability that each pair (row of level indexes) is a match (EM's E-step)."""
    log_odds = np.full(len(matrix), math.log(share / (1 - share)))
    for column, comparison in enumerate(COMPARISONS):
        levels = matrix[:, column]
        present = levels >= 0
        m_arr = np.maximum(np.asarray(m[comparison.name], dtype=float), MIN_PROBABILITY)
        u_arr = np.maximum(np.asarray(u[comparison.name], dtype=float), MIN_PROBABILITY)
        log_odds[present] += np.log(m_arr / u_arr)[levels[present]]
    return 1.0 / (1.0 + np.exp(-np.clip(log_odds, -50, 50)))


def estimate_m_using_em(
    matrix: np.ndarray,
    u: dict[str, list[float]],
    initial_m: dict[str, list[float]],
    *,
    labels: np.ndarray | None = None,
    iterations: int,
    tolerance: float,
    held_out: frozenset[str] = frozenset(),
) -> tuple[dict[str, list[float]], float]:
    """m of every level, and the share of matches, by EM over a level matrix.

    ``labels`` (same length as ``matrix``) is 1 for a known match, 0 for a known
    non-match and NaN for an unlabelled pair. Comparisons in ``held_out`` keep their
    ``initial_m`` (they were used to pick the pairs, so the pairs say nothing about them).
    """
    m = {name: np.array(values, dtype=float) for name, values in initial_m.items()}
    share = INITIAL_MATCH_SHARE
    for _ in range(iterations):
        p = match_probability(matrix, u, m, share)
        if labels is not None:
            known = ~np.isnan(labels)
            p[known] = labels[known]
        change = 0.0
        for column, comparison in enumerate(COMPARISONS):
            if comparison.name in held_out:
                continue
            levels = matrix[:, column]
            present = levels >= 0
            weights = np.bincount(
                levels[present].astype(np.int64),
                weights=p[present],
                minlength=len(comparison.levels),
            )
            total = weights.sum()
            if total <= 0:
                continue
            new = np.maximum(weights / total, MIN_PROBABILITY)
            new = new / new.sum()
            change = max(change, float(np.abs(new - m[comparison.name]).max()))
            m[comparison.name] = new
        share = float(min(max(p.mean(), MIN_PROBABILITY), 1 - MIN_PROBABILITY))
        if change < tolerance:
            break
    return {name: values.tolist() for name, values in m.items()}, share


def estimate_lookalike_rates(
    features: Sequence[MatchFeatures],
    settings: MatchSettings,
    duplicate_pairs: Sequence[tuple[int, int]],
    duplicate_levels: np.ndarray,
    match_probabilities: np.ndarray,
    stratum_pairs: Sequence[tuple[int, int]],
) -> dict[str, dict[str, float]]:
    """Per look-alike pattern (:func:`mpi.guards.lookalike_patterns`): the stratum pairs
    seen among ``stratum_pairs``, the share of them showing the pattern, and the share of
    true duplicates showing it (``duplicate_pairs``, whose comparison levels are
    ``duplicate_levels``, weighted by their match probability).
    """
    dup_weight: Counter[str] = Counter()
    dup_shows: Counter[str] = Counter()
    for row, ((i, j), p) in enumerate(
        zip(duplicate_pairs, match_probabilities.tolist(), strict=True)
    ):
        levels = [None if x == NULL_LEVEL else int(x) for x in duplicate_levels[row]]
        for pattern, shows in lookalike_patterns(
            features[i], features[j], settings, levels
        ).items():
            dup_weight[pattern] += p
            dup_shows[pattern] += p * shows
    seen: Counter[str] = Counter()
    shown: Counter[str] = Counter()
    for i, j in stratum_pairs:
        for pattern, shows in lookalike_patterns(features[i], features[j], settings).items():
            seen[pattern] += 1
            shown[pattern] += shows
    return {
        pattern: {
            "pairs": float(seen[pattern]),
            "observed": shown[pattern] / seen[pattern],
            "duplicates": dup_shows[pattern] / dup_weight[pattern],
        }
        for pattern in seen
        if dup_weight[pattern] > 0
    }


def term_frequencies(
    features: Iterable[MatchFeatures],
) -> tuple[dict[str, dict[str, float]], float]:
    """Relative frequency of each given and family name, and the default for unseen ones."""
    given: Counter[str] = Counter()
    family: Counter[str] = Counter()
    records = 0
    for f in features:
        records += 1
        if f.names:
            name = f.names[0]
            if name.given_first:
                given[name.given_first] += 1
            if name.family:
                family[name.family] += 1
    if not records:
        return {}, MIN_PROBABILITY
    tables = {
        "given": {k: v / records for k, v in given.items() if v >= MIN_TF_COUNT},
        "family": {k: v / records for k, v in family.items() if v >= MIN_TF_COUNT},
    }
    return tables, 1.0 / records


def train_model(
    features: Sequence[MatchFeatures],
    settings: MatchSettings,
    *,
    labels: Iterable[LabelledPair] = (),
    seed: int = 0,
    base: MatchModel | None = None,
    keys: Sequence[list[str]] | None = None,
) -> MatchModel:
    """Learn a model from records (and steward-labelled pairs of record indexes).

    ``keys`` are the records' block keys when the caller has them already."""
    rng = random.Random(seed)
    start = base or MatchModel.default()
    u = estimate_u_using_random_sampling(features, settings.u_sample_pairs, seed=seed, base=start)
    labelled = {(min(i, j), max(i, j)): match for i, j, match in labels}
    m = {name: list(params.m) for name, params in start.comparisons.items()}
    share = INITIAL_MATCH_SHARE
    if keys is None:
        keys = [block_keys(f) for f in features]
    pairs: list[tuple[int, int]] = []
    matrix = np.zeros((0, len(COMPARISONS)), dtype=np.int8)
    label_array = np.zeros(0)
    for kinds, held_out in EM_SESSIONS:
        pairs = sorted(set(_blocked_pairs(keys, settings, rng, kinds)) | set(labelled))
        if not pairs:
            continue
        matrix = _level_matrix(features, pairs)
        label_array = np.array(
            [
                float(labelled[p])
                if p in labelled
                else silver_label(features[p[0]], features[p[1]])
                for p in pairs
            ]
        )
        m, share = estimate_m_using_em(
            matrix,
            u,
            m,
            labels=label_array,
            iterations=settings.em_iterations,
            tolerance=settings.em_tolerance,
            held_out=held_out,
        )
    lookalikes: dict[str, dict[str, float]] = {}
    if pairs:  # the last session's pairs: found by identifiers, not by name or birth date
        p = match_probability(matrix, u, m, share)
        known = ~np.isnan(label_array)
        p[known] = label_array[known]
        stratum = _blocked_pairs(keys, settings, rng, LOOKALIKE_STRATUM_KINDS)
        lookalikes = estimate_lookalike_rates(features, settings, pairs, matrix, p, stratum)
    tf, default_tf = term_frequencies(features)
    comparisons = {c.name: LevelParams(list(c.levels), m[c.name], u[c.name]) for c in COMPARISONS}
    version = datetime.now(UTC).strftime("trained-%Y%m%dT%H%M%SZ")
    return MatchModel(
        version=version,
        comparisons=comparisons,
        term_frequencies=tf,
        default_term_frequency=default_tf,
        match_share=share,
        lookalike_rates=lookalikes,
        trained_on=len(features),
    )
