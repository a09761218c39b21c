"""Batch resolution in memory: the same decisions as the database engine, without I/O.

Used to resolve a whole data set at once (benchmarks, the first load of a big source,
``askonce match evaluate`` on a file) and to train: records are added one by one, exactly
as the incremental engine would see them, but the block index and the golden records
live in dictionaries.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    """Resolves records one at a time against everything added before them."""

    def __init__(self, model: MatchModel, settings: MatchSettings) -> None:
        self.model = model
        self.settings = settings
        self.features: list[MatchFeatures] = []
        self.golden_of: list[str] = []
        self.members: dict[str, list[int]] = {}
        self.index = MemoryBlockIndex(settings.max_block_size)
        self.merges = 0
        self.reviews = 0

    def add(self, features: MatchFeatures) -> Decision:
        keys = block_keys(features)
        found = self.index.candidates(keys, self.settings.max_candidates)
        goldens = {self.golden_of[i] for i in found}
        members = [
            Member(i, golden, self.features[i])
            for golden in sorted(goldens)
            for i in self.members[golden][:MAX_MEMBERS_PER_GOLDEN]
        ]
        candidates = score_candidates(self.model, self.settings, features, members)
        decision = decide(candidates, self.settings, members=members)
        record = len(self.features)
        self.features.append(features)
        golden = decision.golden_id or f"g{record}"
        self.golden_of.append(golden)
        self.members.setdefault(golden, []).append(record)
        for loser in decision.merge:
            for moved in self.members.pop(loser, []):
                self.golden_of[moved] = golden
                self.members[golden].append(moved)
            self.merges += 1
        self.reviews += len(decision.reviews)
        self.index.add(record, keys)
        return decision


def resolve_batch(
    records: Iterable[MatchFeatures], model: MatchModel, settings: MatchSettings
) -> BatchResult:
    """Resolve ``records`` in order; returns the golden id of each."""
    resolver = MemoryResolver(model, settings)
    decisions = [resolver.add(f) for f in records]
    return BatchResult(
        golden_ids=list(resolver.golden_of),
        decisions=decisions,
        merges=resolver.merges,
        reviews=resolver.reviews,
        skipped_keys=resolver.index.skipped_keys,
        clusters={g: list(m) for g, m in resolver.members.items()},
    )
