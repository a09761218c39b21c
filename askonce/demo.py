"""``askonce demo``: the whole product on a laptop, with no service to install.

Creates the embedded SQLite database, registers the three bundled demo EHRs
(NDJSON folders under ``askonce/demo_data``, made by ``tools/make_demo_data.py``),
syncs them with progress through the real pipeline, prints what came out and
serves the API. Running it again re-syncs; unchanged records are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select

from askonce.cli_sources import print_run_summary, sync_with_progress
from askonce.runtime import Runtime
from askonce.sources import add_source, summary_counts
from gateway.auth import Credentials, register_consumer
from gateway.auth.secrets import hash_secret, new_client_secret
from gateway.operations.questionnaires import put_questionnaire
from store import NotFoundError, SourceRepository
from store.models import Consumer
from sync.runner import PORTAL_CLIENT_KEY

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
#: A portal's intake form (SDC population expressions), for ``Questionnaire/$populate``.
INTAKE_QUESTIONNAIRE = DEMO_DATA / "intake-questionnaire.json"
#: Python that prints the ``$populate`` Parameters for a Questionnaire file and a golden id.
POPULATE_BODY = (
    'import json,sys; print(json.dumps({"resourceType": "Parameters", "parameter": ['
    '{"name": "questionnaire", "resource": json.load(open(sys.argv[1]))}, '
    '{"name": "subject", "valueReference": {"reference": "Patient/" + sys.argv[2]}}]}))'
)
#: Python that reads ``$populate``'s output, answers the mobile phone question with its
#: argument and prints the completed QuestionnaireResponse, its form contained, as a
#: portal submits it (``POST /fhir/QuestionnaireResponse``).
SUBMIT_BODY = (
    "import json,sys; "
    'r=[p["resource"] for p in json.load(sys.stdin)["parameter"] if p["name"]=="response"][0]; '
    'q=json.load(open(sys.argv[1])); q["id"]="intake"; '
    'r.update(status="completed", questionnaire="#intake", contained=[q]); '
    '[i.update(answer=[{"valueString": sys.argv[2]}]) for g in r["item"] '
    'for i in g.get("item", []) if i["linkId"]=="contact.mobile"]; print(json.dumps(r))'
)
#: The bundled EHRs and their survivorship trust rank (higher wins ties).
DEMO_SOURCES = {"ehr-a": 70, "ehr-b": 50, "ehr-c": 30}
#: The id the bundled intake form is stored under (``GET /fhir/Questionnaire/intake``).
DEMO_FORM_ID = "intake"
#: The demo's patient portal: the source its submitted forms become (sent by the demo
#: consumer), with values the patient confirmed.
DEMO_PORTAL = "portal"
DEMO_PORTAL_RANK = 60
#: The demo's own consumer: it may read patients and encounters, merge golden records,
#: subscribe to their changes and use the admin API.
DEMO_CONSUMER = "demo"
DEMO_SCOPES = (
    "system/Patient.rus",
    "system/Encounter.rs",
    "system/Subscription.cruds",
    "system/QuestionnaireResponse.crs",
    "system/Questionnaire.cruds",
    "askonce.admin",
)


def demo_credentials(runtime: Runtime) -> Credentials:
    """Credentials of the demo consumer: registered once, its secret rotated on every run.

    Only secret hashes are stored, so showing a usable secret means issuing a new one.
    """
    with runtime.unit_of_work() as session:
        consumer = session.scalar(select(Consumer).where(Consumer.name == DEMO_CONSUMER))
        if consumer is None:
            return register_consumer(session, DEMO_CONSUMER, "steward", DEMO_SCOPES)
        secret = new_client_secret()
        consumer.secret_hash = hash_secret(secret)
        consumer.active = True
        consumer.scopes = list(DEMO_SCOPES)
        return Credentials(
            consumer.id, consumer.name, consumer.client_id, secret, list(consumer.scopes)
        )


def print_demo_access(console: Console, credentials: Credentials, base_url: str) -> None:
    """How to get a token and read the golden records the demo just built."""
    console.print(
        f"""[bold]Steward console[/bold]: {base_url}/console
  (sign in with the demo consumer's client id and secret, below)
[bold]Try it[/bold] (demo consumer, scopes: {" ".join(credentials.scopes)})
  TOKEN=$(curl -s -u {credentials.client_id}:{credentials.client_secret} \\
      -d grant_type=client_credentials {base_url}/auth/token | python3 -c \\
      'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s -H "Authorization: Bearer $TOKEN" "{base_url}/fhir/Patient?_count=5"
  curl -s -H "Authorization: Bearer $TOKEN" "{base_url}/admin/review"
  Pre-fill the bundled intake form for the first of them (SDC $populate):
  ID=$(curl -s -H "Authorization: Bearer $TOKEN" "{base_url}/fhir/Patient?_count=1" | \\
      python3 -c 'import json,sys; print(json.load(sys.stdin)["entry"][0]["resource"]["id"])')
  python3 -c '{escape(POPULATE_BODY)}' {INTAKE_QUESTIONNAIRE} $ID | curl -s -X POST \\
      -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/fhir+json" \\
      --data-binary @- "{base_url}/fhir/Questionnaire/\\$populate"
  ... and submit it back with a new mobile number, as the patient portal would: the
  number the patient confirmed now comes first in the golden record:
  python3 -c '{escape(POPULATE_BODY)}' {INTAKE_QUESTIONNAIRE} $ID | curl -s -X POST \\
      -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/fhir+json" \\
      --data-binary @- "{base_url}/fhir/Questionnaire/\\$populate" | \\
      python3 -c '{escape(SUBMIT_BODY)}' {INTAKE_QUESTIONNAIRE} "+1 415 555 0100" | \\
      curl -s -X POST -H "Authorization: Bearer $TOKEN" \\
      -H "Content-Type: application/fhir+json" -H "Prefer: return=OperationOutcome" \\
      --data-binary @- "{base_url}/fhir/QuestionnaireResponse"
  curl -s -H "Authorization: Bearer $TOKEN" "{base_url}/fhir/Patient/$ID"
  Export everyone as NDJSON (Bulk Data $export), then read its manifest:
  LOC=$(curl -s -D - -o /dev/null -H "Authorization: Bearer $TOKEN" \\
      -H "Prefer: respond-async" "{base_url}/fhir/\\$export" | tr -d '\\r' | \\
      awk 'tolower($1)=="content-location:" {{print $2}}')
  sleep 1; curl -s -H "Authorization: Bearer $TOKEN" "$LOC"
  The intake form is stored as {base_url}/fhir/Questionnaire/{DEMO_FORM_ID}: a request may
  name it ("canonical" in $populate, "questionnaire" in a QuestionnaireResponse) instead.
  OpenAPI: {base_url}/docs   CapabilityStatement: {base_url}/fhir/metadata
  Change notifications: POST {base_url}/fhir/Subscription (README: "Change notifications")
  Prometheus metrics: {base_url}/metrics""",
        soft_wrap=True,  # commands stay one copyable line each, however narrow the terminal
    )


def register_demo_sources(runtime: Runtime, data: Path = DEMO_DATA) -> dict[str, int]:
    """Register each bundled EHR once (by name); returns name -> source id."""
    ids: dict[str, int] = {}
    for name, rank in DEMO_SOURCES.items():
        with runtime.session_factory() as session:
            try:
                ids[name] = SourceRepository(session).get_by_name(name).id
                continue
            except NotFoundError:
                pass
        ids[name] = add_source(runtime, name, kind="ndjson", url=str(data / name), trust_rank=rank)
    return ids


def store_demo_form(runtime: Runtime) -> None:
    """Store the bundled intake form as ``Questionnaire/intake``, so that requests can name
    it by its canonical URL instead of sending it."""
    form = json.loads(INTAKE_QUESTIONNAIRE.read_text(encoding="utf-8"))
    with runtime.unit_of_work() as session:
        put_questionnaire(session, DEMO_FORM_ID, {**form, "id": DEMO_FORM_ID})


def register_demo_portal(runtime: Runtime, client_id: str) -> int:
    """Register the demo's patient portal once, receiving ``client_id``'s forms."""
    with runtime.session_factory() as session:
        try:
            source = SourceRepository(session).get_by_name(DEMO_PORTAL)
        except NotFoundError:
            pass
        else:
            source.config = {**(source.config or {}), PORTAL_CLIENT_KEY: client_id}
            session.commit()
            return source.id
    return add_source(
        runtime,
        DEMO_PORTAL,
        kind="portal",
        url="https://portal.askonce.dev",
        config={PORTAL_CLIENT_KEY: client_id},
        trust_rank=DEMO_PORTAL_RANK,
    )


def run_demo_sync(runtime: Runtime, console: Console, data: Path = DEMO_DATA) -> dict[str, int]:
    """Register and sync the demo sources with progress; print and return the summary."""
    for name, source_id in register_demo_sources(runtime, data).items():
        run = sync_with_progress(runtime, source_id, name, full=False)
        print_run_summary(run, name)
    counts = summary_counts(runtime)
    table = Table("", "count", title="askonce demo")
    table.add_row("source records", f"{counts['source_records']:,}")
    table.add_row("  of which quarantined", f"{counts['quarantined']:,}")
    table.add_row("golden records", f"{counts['golden_records']:,}")
    table.add_row("review items (open)", f"{counts['review_items']:,}")
    console.print(table)
    return counts
