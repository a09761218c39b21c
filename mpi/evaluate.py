"""Pairwise evaluation of golden records against a labelled truth.

Two records are a *true pair* when the truth gives them the same person, a *predicted
pair* when they share a golden record. Precision, recall and F1 are over pairs (the
measure Febrl and Splink report). An *overlay* is a golden record holding more than one
true person (the patient-safety failure); a *split* is a true person spread over more than
one golden record. Recall per tag counts the true pairs that involve a record with the tag.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

#: Hard-negative tags whose merges are counted separately.
GUARDED_TAGS = ("twin", "jr-sr")


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


@dataclass
class Evaluation:
    precision: float
    recall: float
    f1: float
    true_pairs: int
    predicted_pairs: int
    true_positive_pairs: int
    overlays: int
    splits: int
    recall_by_tag: dict[str, float] = field(default_factory=dict)
    merges_by_tag: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": round(self.precision, 6),
            "recall": round(self.recall, 6),
            "f1": round(self.f1, 6),
            "true_pairs": self.true_pairs,
            "predicted_pairs": self.predicted_pairs,
            "true_positive_pairs": self.true_positive_pairs,
            "overlays": self.overlays,
            "splits": self.splits,
            "recall_by_tag": {k: round(v, 6) for k, v in sorted(self.recall_by_tag.items())},
            "merges_by_tag": dict(sorted(self.merges_by_tag.items())),
        }


def evaluate_clusters(
    golden_of: Mapping[Any, str],
    person_of: Mapping[Any, str],
    tags: Mapping[Any, Sequence[str]] | None = None,
) -> Evaluation:
    """Compare an assignment of records to golden records with the truth.

    Only records present in both mappings count.
    """
    tags = tags or {}
    keys = [k for k in person_of if k in golden_of]
    cells: Counter[tuple[str, str]] = Counter((golden_of[k], person_of[k]) for k in keys)
    goldens: Counter[str] = Counter(golden_of[k] for k in keys)
    persons: Counter[str] = Counter(person_of[k] for k in keys)
    tp = sum(_pairs(n) for n in cells.values())
    predicted = sum(_pairs(n) for n in goldens.values())
    true = sum(_pairs(n) for n in persons.values())
    precision = tp / predicted if predicted else 1.0
    recall = tp / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    persons_in: dict[str, set[str]] = defaultdict(set)
    goldens_of_person: dict[str, set[str]] = defaultdict(set)
    for golden, person in cells:
        persons_in[golden].add(person)
        goldens_of_person[person].add(golden)
    overlays = sum(1 for p in persons_in.values() if len(p) > 1)
    splits = sum(1 for g in goldens_of_person.values() if len(g) > 1)
    by_person: dict[str, list[Hashable]] = defaultdict(list)
    for k in keys:
        by_person[person_of[k]].append(k)
    tag_total: Counter[str] = Counter()
    tag_hit: Counter[str] = Counter()
    for records in by_person.values():
        for x, y in combinations(records, 2):
            for tag in set(tags.get(x, ())) | set(tags.get(y, ())):
                tag_total[tag] += 1
                tag_hit[tag] += golden_of[x] == golden_of[y]
    person_tags: dict[str, set[str]] = defaultdict(set)
    for k in keys:
        person_tags[person_of[k]].update(tags.get(k, ()))
    merges = {
        tag: sum(
            1
            for members in persons_in.values()
            if sum(1 for p in members if tag in person_tags[p]) > 1
        )
        for tag in GUARDED_TAGS
    }
    return Evaluation(
        precision=precision,
        recall=recall,
        f1=f1,
        true_pairs=true,
        predicted_pairs=predicted,
        true_positive_pairs=tp,
        overlays=overlays,
        splits=splits,
        recall_by_tag={t: tag_hit[t] / n for t, n in tag_total.items()},
        merges_by_tag=merges,
    )
