"""Batch resolution in memory: the same decisions as the database engine, without I/O.

Used to resolve a whole data set at once (benchmarks, the first load of a big source,
``askonce match evaluate`` on a file) and to train: records are added one by one, exactly
as the incremental engine would see them, but the block index and the golden records
live in dictionaries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from mpi.blocking import MemoryBlockIndex, block_keys
from mpi.decision import Decision, Member, decide, score_candidates
from mpi.features import MatchFeatures
from mpi.model import MatchModel
from mpi.settings import MatchSettings

#: Members of one candidate golden record that are scored and guard-checked.
MAX_MEMBERS_PER_GOLDEN = 50


@dataclass
class BatchResult:
    """The golden record of each input record, plus counts."""

    golden_ids: list[str]
    decisions: list[Decision]
    merges: int = 0
    reviews: int = 0
    skipped_keys: int = 0
    clusters: dict[str, list[int]] = field(default_factory=dict)


class MemoryResolver:
    """Resolves records one at a time against everything added before them.

    Record ids are the caller's (``add(..., record=...)``, by default 0, 1, 2…); the
    database engine (:mod:`mpi.resolve`) seeds ``features``, ``golden_of``, ``members`` and
    ``index`` with the stored records a batch can meet, so that the records of one batch
    see each other exactly as they see the stored ones.
    """

    def __init__(
        self,
        model: MatchModel,
        settings: MatchSettings,
        *,
        new_golden: Callable[[int], str] | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.features: dict[int, MatchFeatures] = {}
        self.golden_of: dict[int, str] = {}
        self.members: dict[str, list[int]] = {}
        self.index = MemoryBlockIndex(settings.max_block_size)
        self.merges = 0
        self.reviews = 0
        self._new_golden = new_golden or (lambda record: f"g{record}")

    def candidate_goldens(self, keys: list[str], found: list[int] | None = None) -> set[str]:
        """Golden records of the records sharing a usable key with ``keys`` (``found``:
        those records, when the caller has just ranked them)."""
        if found is None:
            found = self.index.candidates(keys, self.settings.max_candidates)
        return {g for g in (self.golden_of.get(i) for i in found) if g is not None}

    def candidate_members(self, keys: list[str], found: list[int] | None = None) -> list[Member]:
        return [
            Member(i, golden, self.features[i])
            for golden in sorted(self.candidate_goldens(keys, found))
            for i in self.members.get(golden, [])[:MAX_MEMBERS_PER_GOLDEN]
        ]

    def add(
        self,
        features: MatchFeatures,
        *,
        record: int | None = None,
        keys: list[str] | None = None,
        manual_match: str | None = None,
        no_match: set[str] | None = None,
        allow_merge: Callable[[str, str], bool] | None = None,
        found: list[int] | None = None,
    ) -> Decision:
        """Decide for one record and file it; ``allow_merge(loser, survivor)`` may veto
        a merge the decision asks for (it is then dropped from ``decision.merge``).
        ``found``: ``index.candidates(keys, max_candidates)`` if the caller has just
        computed it (the index has not changed since), not ranked a second time."""
        keys = block_keys(features) if keys is None else keys
        members = self.candidate_members(keys, found)
        candidates = score_candidates(self.model, self.settings, features, members)
        decision = decide(
            candidates,
            self.settings,
            members=members,
            manual_match=manual_match,
            no_match=no_match,
        )
        record = len(self.golden_of) if record is None else record
        self.features[record] = features
        golden = decision.golden_id or self._new_golden(record)
        self.golden_of[record] = golden
        self.members.setdefault(golden, []).append(record)
        if allow_merge is not None:
            decision.merge = [loser for loser in decision.merge if allow_merge(loser, golden)]
        for loser in decision.merge:
            for moved in self.members.pop(loser, []):
                self.golden_of[moved] = golden
                self.members[golden].append(moved)
            self.merges += 1
        self.reviews += len(decision.reviews)
        self.index.add(record, keys)
        return decision


def resolve_batch(
    records: Iterable[MatchFeatures],
    model: MatchModel,
    settings: MatchSettings,
    *,
    keys: Sequence[list[str]] | None = None,
) -> BatchResult:
    """Resolve ``records`` in order; returns the golden id of each. ``keys`` are their
    block keys when the caller has them already (e.g. from training)."""
    resolver = MemoryResolver(model, settings)
    if keys is None:
        decisions = [resolver.add(f) for f in records]
    else:
        decisions = [resolver.add(f, keys=k) for f, k in zip(records, keys, strict=True)]
    return BatchResult(
        golden_ids=[resolver.golden_of[i] for i in range(len(decisions))],
        decisions=decisions,
        merges=resolver.merges,
        reviews=resolver.reviews,
        skipped_keys=resolver.index.skipped_keys,
        clusters={g: list(m) for g, m in resolver.members.items()},
    )
