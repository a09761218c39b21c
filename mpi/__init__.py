"""mpi: the golden-record engine. Match, link, survive, explain.

Blocking finds candidates (:mod:`mpi.blocking`), Fellegi-Sunter comparisons score them
(:mod:`mpi.comparisons`, :mod:`mpi.model`, trained by :mod:`mpi.train`), guards veto
look-alikes (:mod:`mpi.guards`), the decision grades and links (:mod:`mpi.decision`,
:mod:`mpi.resolve`), survivorship builds the golden record (:mod:`mpi.survivorship`), and
link/unlink/merge/unmerge change it under stewards' control (:mod:`mpi.operations`).

Errors (see :mod:`mpi.errors`)::

    MpiError
    ├── GoldenNotFound
    ├── RecordNotFound
    ├── ReviewItemNotFound
    └── InvalidOperation
        └── MergeRefused
"""

from __future__ import annotations

from mpi.admin import (
    CROSSWALK_COLUMNS,
    MatchCandidate,
    MergeCheck,
    check_merge,
    crosswalk_rows,
    evaluate_links,
    get_review_item,
    likely_duplicates,
    list_review_items,
    match_patient,
    merge_patients,
    record_decision,
    review_item_dict,
    train_from_database,
)
from mpi.batch import BatchResult, MemoryResolver, resolve_batch
from mpi.blocking import block_keys
from mpi.comparisons import COMPARISONS, Comparison
from mpi.errors import (
    GoldenNotFound,
    InvalidOperation,
    MergeRefused,
    MpiError,
    RecordNotFound,
    ReviewItemNotFound,
)
from mpi.evaluate import Evaluation, evaluate_clusters
from mpi.features import MatchFeatures, extract_features
from mpi.guards import guard_reasons
from mpi.model import MatchModel, Score
from mpi.operations import (
    golden_block_keys,
    link_record,
    lock_goldens,
    merge_golden,
    recompute_golden,
    repoint_encounters,
    unlink_record,
    unmerge_golden,
)
from mpi.resolve import (
    Resolution,
    holds_block_locks,
    resolve_patients,
    stored_features,
    uses_block_locks,
)
from mpi.review import WITHDRAWN, settle_review_items
from mpi.settings import MatchSettings
from mpi.storage import load_active_model, recompute_goldens, save_model
from mpi.train import train_model

__all__ = [
    "COMPARISONS",
    "CROSSWALK_COLUMNS",
    "WITHDRAWN",
    "BatchResult",
    "Comparison",
    "Evaluation",
    "GoldenNotFound",
    "InvalidOperation",
    "MatchCandidate",
    "MatchFeatures",
    "MatchModel",
    "MatchSettings",
    "MemoryResolver",
    "MergeCheck",
    "MergeRefused",
    "MpiError",
    "RecordNotFound",
    "Resolution",
    "ReviewItemNotFound",
    "Score",
    "block_keys",
    "check_merge",
    "crosswalk_rows",
    "evaluate_clusters",
    "evaluate_links",
    "extract_features",
    "get_review_item",
    "golden_block_keys",
    "guard_reasons",
    "holds_block_locks",
    "likely_duplicates",
    "link_record",
    "list_review_items",
    "load_active_model",
    "lock_goldens",
    "match_patient",
    "merge_golden",
    "merge_patients",
    "recompute_golden",
    "recompute_goldens",
    "record_decision",
    "repoint_encounters",
    "resolve_batch",
    "resolve_patients",
    "review_item_dict",
    "save_model",
    "settle_review_items",
    "stored_features",
    "train_from_database",
    "train_model",
    "unlink_record",
    "unmerge_golden",
    "uses_block_locks",
]
