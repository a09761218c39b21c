"""Splink 5 (DuckDB) as the reference matcher for ``bench/match_quality.py``.

Set up the way Splink's own tutorials do: name comparisons with term-frequency
adjustment, a date-of-birth comparison, Levenshtein on identifiers and postcodes,
``u`` by random sampling, ``m`` by EM on two blocking rules that each leave the other
fields free, prediction over several blocking rules, and clusters at a match probability
of 0.9. Input columns are the normalized features our own parser produced (folded names,
E.164 phones), so both engines see the same values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd
import splink.comparison_library as cl
from splink import DuckDBAPI, Linker, SettingsCreator, block_on

#: Match probability at which Splink's pairwise predictions are clustered.
SPLINK_CLUSTER_THRESHOLD = 0.9
#: Pairs sampled by Splink to estimate u.
SPLINK_U_PAIRS = 1e6
#: Per-record real-time calls timed through Splink's SQL pipeline.
SPLINK_REALTIME_CALLS = 20

COLUMNS = (
    "given",
    "family",
    "dob",
    "gender",
    "phone",
    "email",
    "ssn",
    "identifier",
    "postcode",
    "street",
    "city",
)


def _comparisons(frame: pd.DataFrame) -> list[Any]:
    comparisons: list[Any] = [
        cl.NameComparison("given").configure(term_frequency_adjustments=True),
        cl.NameComparison("family").configure(term_frequency_adjustments=True),
        cl.DateOfBirthComparison("dob", input_is_string=True, datetime_format="%Y-%m-%d"),
    ]
    present = {c for c in COLUMNS if frame[c].notna().any()}
    if "gender" in present:
        comparisons.append(cl.ExactMatch("gender"))
    if "phone" in present:
        comparisons.append(cl.ExactMatch("phone"))
    if "email" in present:
        comparisons.append(cl.EmailComparison("email"))
    for column in ("ssn", "identifier", "postcode"):
        if column in present:
            comparisons.append(cl.LevenshteinAtThresholds(column, [1, 2]))
    if "street" in present:
        comparisons.append(cl.JaroWinklerAtThresholds("street", [0.9, 0.7]))
    if "city" in present:
        comparisons.append(cl.JaroWinklerAtThresholds("city", [0.9]))
    return comparisons


def _blocking(frame: pd.DataFrame) -> list[Any]:
    rules = [block_on("given", "family"), block_on("dob"), block_on("postcode", "family")]
    for column in ("ssn", "identifier", "phone", "email"):
        if frame[column].notna().any():
            rules.append(block_on(column))
    return rules


def run_splink(
    frames: Sequence[pd.DataFrame], *, link_only: bool
) -> tuple[dict[str, str], float, float | None]:
    """Train, predict and cluster; returns (cluster of each unique_id, seconds for train +
    predict + cluster, median ms of one real-time ``find_matches`` call or None)."""
    logging.getLogger("splink").setLevel(logging.ERROR)
    frame = pd.concat(frames, ignore_index=True)
    settings = SettingsCreator(
        link_type="link_only" if link_only else "dedupe_only",
        comparisons=_comparisons(frame),
        blocking_rules_to_generate_predictions=_blocking(frame),
        retain_intermediate_calculation_columns=False,
    )
    db_api = DuckDBAPI()
    started = time.perf_counter()
    registered = [db_api.register(f) for f in frames]
    linker = Linker(registered if link_only else registered[0], settings, log_level=logging.ERROR)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("given", "family", "dob")], recall=0.7
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=SPLINK_U_PAIRS, seed=1)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("dob"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("given", "family"))
    predictions = linker.inference.predict(threshold_match_probability=0.01)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
        predictions, threshold_match_probability=SPLINK_CLUSTER_THRESHOLD
    )
    table = clusters.as_pandas_dataframe()
    elapsed = time.perf_counter() - started
    assignment = {
        str(u): str(c) for u, c in zip(table["unique_id"], table["cluster_id"], strict=True)
    }
    realtime_ms = None if link_only else _time_realtime(linker, db_api, registered[0], frame)
    return assignment, elapsed, realtime_ms


def _time_realtime(
    linker: Linker, db_api: DuckDBAPI, existing: Any, frame: pd.DataFrame
) -> float | None:
    """Median ms of matching one new record against the data with Splink's per-call SQL
    pipeline (``predict_between``), the way an incremental caller would use it."""
    timings = []
    for _, row in frame.head(SPLINK_REALTIME_CALLS).iterrows():
        record = row.to_frame().T.copy()
        record["unique_id"] = "new-" + str(row["unique_id"])
        started = time.perf_counter()
        try:
            new = db_api.register(record)
            linker.inference.predict_between(new, existing).as_pandas_dataframe()
        except Exception:
            return None
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return timings[len(timings) // 2] if timings else None
