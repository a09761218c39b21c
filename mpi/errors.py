"""Errors of the golden-record engine::

MpiError
├── GoldenNotFound        a golden record id that does not exist
├── RecordNotFound        a source record id that does not exist or is not a Patient
├── ReviewItemNotFound    a review item id that does not exist
└── InvalidOperation      the operation does not apply (unmerge of a record never
    │                     merged, merging a record into itself, deciding twice…)
    └── MergeRefused      a steward's merge of two golden records that the records
                          say are two people (a guard, a "no-match", certainly-not)
"""

from __future__ import annotations

from typing import Any


class MpiError(Exception):
    """Base of every error the mpi package raises."""


class GoldenNotFound(MpiError):
    def __init__(self, golden_id: str) -> None:
        super().__init__(f"golden record {golden_id} not found")
        self.golden_id = golden_id


class RecordNotFound(MpiError):
    def __init__(self, record_id: int) -> None:
        super().__init__(f"source record {record_id} not found")
        self.record_id = record_id


class ReviewItemNotFound(MpiError):
    def __init__(self, item_id: int) -> None:
        super().__init__(f"review item {item_id} not found")
        self.item_id = item_id


class InvalidOperation(MpiError):
    """The operation does not apply to the records named."""


class MergeRefused(InvalidOperation):
    """Two golden records whose records say they are two people; ``check`` is the
    :class:`mpi.admin.MergeCheck` that says why."""

    def __init__(self, reasons: list[str], check: Any) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons
        self.check = check
