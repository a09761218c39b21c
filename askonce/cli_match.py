"""``askonce match train|evaluate`` and ``askonce links export``: the matching model and links.

* ``askonce match train [--seed N]`` retrains the model on every active source Patient
  and every steward decision, and makes it the active model.
* ``askonce match evaluate --truth FILE`` scores the current links against a truth CSV
  (``source,resource_type,resource_id,person_id,tags``, as ``tools/ehrgen.py`` writes it):
  pairwise precision, recall and F1, overlays, splits and recall per tag.
* ``askonce links export [--out FILE]`` writes the crosswalk CSV
  (``source,resource_type,resource_id,golden_id,grade,score``).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console
from rich.table import Table

from askonce.runtime import match_settings
from mpi import (
    CROSSWALK_COLUMNS,
    crosswalk_rows,
    evaluate_links,
    train_from_database,
)

match_app = typer.Typer(help="Train and evaluate the matching model.", no_args_is_help=True)
links_app = typer.Typer(
    help="Export the links of source records to golden records.", no_args_is_help=True
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

TRUTH_COLUMNS = ("source", "resource_type", "resource_id", "person_id", "tags")


def read_truth(path: Path) -> list[tuple[str, str, str, str, list[str]]]:
    """Rows of a truth CSV; ``resource_type`` defaults to Patient, ``tags`` are ``|``-separated."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"source", "resource_id", "person_id"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"truth file lacks columns: {', '.join(sorted(missing))}")
        return [
            (
                row["source"],
                row.get("resource_type") or "Patient",
                row["resource_id"],
                row["person_id"],
                [t for t in (row.get("tags") or "").split("|") if t],
            )
            for row in reader
        ]


@match_app.command("train")
def train(seed: Annotated[int, typer.Option(help="Seed of the random pair sample.")] = 0) -> None:
    """Retrain m/u probabilities and name frequencies from the stored records."""
    from askonce.cli import _runtime, _settings

    settings = _settings()
    runtime = _runtime(settings)
    with console.status("training the match model"), runtime.unit_of_work() as session:
        model = train_from_database(session, settings=match_settings(settings), seed=seed)
    table = Table("comparison", "level", "m", "u", "log2 weight")
    for name, params in model.comparisons.items():
        for level, m, u, w in zip(params.levels, params.m, params.u, params.weights(), strict=True):
            table.add_row(name, level, f"{m:.4f}", f"{u:.2e}", f"{w:+.2f}")
    out.print(table)
    console.print(f"[green]model {model.version} trained on {model.trained_on} records[/green]")


@match_app.command("evaluate")
def evaluate(
    truth: Annotated[
        Path,
        typer.Option(
            "--truth", exists=True, dir_okay=False, help="Truth CSV (see tools/ehrgen.py)."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score the current links against a labelled truth file."""
    from askonce.cli import _runtime, _settings

    try:
        rows = read_truth(truth)
    except (ValueError, KeyError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    runtime = _runtime(_settings())
    with runtime.unit_of_work() as session:
        result = evaluate_links(session, rows)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
        return
    summary = Table("measure", "value")
    for key in ("precision", "recall", "f1"):
        summary.add_row(key, f"{getattr(result, key):.5f}")
    summary.add_row("true pairs", str(result.true_pairs))
    summary.add_row("predicted pairs", str(result.predicted_pairs))
    summary.add_row("overlays (golden records holding >1 person)", str(result.overlays))
    summary.add_row("splits (persons over >1 golden record)", str(result.splits))
    for tag, merges in sorted(result.merges_by_tag.items()):
        summary.add_row(f"{tag} merges", str(merges))
    out.print(summary)
    tags = Table("tag", "recall")
    for tag, recall in sorted(result.recall_by_tag.items()):
        tags.add_row(tag, f"{recall:.4f}")
    out.print(tags)


def _write_crosswalk(handle: TextIO) -> int:
    from askonce.cli import _runtime, _settings

    runtime = _runtime(_settings())
    writer = csv.writer(handle)
    writer.writerow(CROSSWALK_COLUMNS)
    count = 0
    with runtime.unit_of_work() as session:
        for row in crosswalk_rows(session):
            writer.writerow([row[c] if row[c] is not None else "" for c in CROSSWALK_COLUMNS])
            count += 1
    return count


@links_app.command("export")
def export(
    out_path: Annotated[Path | None, typer.Option("--out", help="Write here, not stdout.")] = None,
) -> None:
    """Write the crosswalk: one CSV row per linked source Patient."""
    if out_path is None:
        count = _write_crosswalk(sys.stdout)
    else:
        with out_path.open("w", newline="", encoding="utf-8") as handle:
            count = _write_crosswalk(handle)
    console.print(f"[green]{count} links exported[/green]")
