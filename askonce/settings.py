"""Runtime configuration: the only code in askonce that reads the environment.

Every setting is an environment variable with the ``ASKONCE_`` prefix, e.g.
``ASKONCE_DATABASE_URL``. A ``.env`` file in the working directory is read too.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./askonce.db"
#: The demo's placeholder secret: 32 bytes or more, so that even the demo's tokens use a
#: key as long as HS256 requires (RFC 7518 section 3.2; PyJWT warns on every token
#: signed or checked with a shorter one).
DEMO_SECRET = "demo-secret-not-for-production-use"  # noqa: S105 - a known placeholder
#: Secret values that ship in examples; refused outside the demo.
PLACEHOLDER_SECRETS = frozenset(
    {"", "change-me", "changeme", "secret", "demo-secret-not-for-production", DEMO_SECRET}
)
#: The shortest ``ASKONCE_SECRET_KEY`` accepted outside the demo, in bytes: an HS256 key
#: "of the same size as the hash output (256 bits) or larger" (RFC 7518 section 3.2).
MIN_SECRET_BYTES = 32

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


#: Every setting's environment variable starts with it.
ENV_PREFIX = "ASKONCE_"


class PlaceholderSecretError(RuntimeError):
    """A placeholder secret is configured while demo mode is off."""


class Settings(BaseSettings):
    """askonce settings, read from ``ASKONCE_*`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL. SQLite (the embedded default) or postgresql+psycopg://…",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL for the Celery broker and result backend. Unset: embedded mode, "
        "tasks run in-process.",
    )
    task_queue: str = Field(default="askonce", description="Celery queue the workers consume.")
    worker_concurrency: int = Field(default=2, ge=1, description="Worker processes per worker.")
    log_level: LogLevel = Field(
        default="INFO", description="Lowest level logged (DEBUG … CRITICAL)."
    )
    log_json: bool = Field(default=True, description="Emit logs as one JSON object per line.")
    secret_key: SecretStr = Field(
        default=SecretStr(DEMO_SECRET),
        description=(
            "Signs the access tokens the gateway issues (HS256) and its paging cursors;"
            " outside the demo it must be set, and at least 32 bytes long."
        ),
    )
    demo: bool = Field(default=False, description="Demo mode allows placeholder secrets.")
    serve_workers: int = Field(
        default=1, ge=1, description="Gateway server processes (`askonce serve`)."
    )
    host: str = Field(default="127.0.0.1", description="Interface the API listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the API listens on.")
    default_region: str = Field(
        default="US", description="Region used to parse phone numbers with no country code."
    )
    token_lifetime_s: int = Field(
        default=300, ge=30, le=3600, description="Lifetime of gateway access tokens (seconds)."
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body the gateway accepts."
    )
    page_size_default: int = Field(
        default=20, ge=1, description="FHIR search page size when _count is not given."
    )
    page_size_max: int = Field(default=200, ge=1, description="Largest _count honoured.")
    public_base_url: str | None = Field(
        default=None,
        description="URL consumers reach the gateway at (behind a proxy); unset: from requests.",
    )
    delivery_allow_http: bool = Field(
        default=False,
        description=(
            "Let Subscriptions and webhooks deliver to plain-http endpoints on other hosts "
            "(a private network); false: https only, http to a loopback host."
        ),
    )
    schedule_interval_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How often the sources whose schedule is due are started (s): beat's tick, or"
            " the server's own in embedded mode."
        ),
    )
    sync_stall_after_s: float = Field(
        default=300.0,
        gt=0,
        description=(
            "A running sync with no committed page for this long counts as crashed and is"
            " resumed by the next tick (s); also the wait before a failed catch-up sync"
            " (a gap in a source's push notifications) is tried again."
        ),
    )
    subscription_check_s: float = Field(
        default=300.0,
        gt=0,
        description=(
            "How often the scheduler reads each Subscription askonce created on an EHR"
            " (`askonce sources subscribe`), sooner when its heartbeat is overdue (s)."
        ),
    )
    mllp_refresh_s: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How often `askonce mllp` reads the hl7v2 sources again (s): a new or enabled"
            " source starts listening, a disabled, removed or moved one stops, and"
            " certificate files replaced on disk are loaded. 0: only on SIGHUP."
        ),
    )
    delivery_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often change events are handed to Subscriptions and webhooks (s).",
    )
    outbox_retention_days: int = Field(
        default=30,
        ge=0,
        description=(
            "Days a change event is kept once every subscription has received it (and how "
            "far back a Subscription's $events reaches); 0 keeps them for ever."
        ),
    )
    run_retention_days: int = Field(
        default=90,
        ge=0,
        description=(
            "Days finished sync runs are kept (each source's latest run stays); "
            "0 keeps them for ever."
        ),
    )
    export_retention_hours: int = Field(
        default=24,
        ge=1,
        description="Hours a Bulk Data export's files can be downloaded once it is complete.",
    )
    export_file_resources: int = Field(
        default=10_000,
        ge=100,
        le=1_000_000,
        description="Resources in one Bulk Data export file at most.",
    )
    export_max_active: int = Field(
        default=4,
        ge=1,
        description="Bulk Data exports one client may have in progress at once (then 429).",
    )
    prune_interval_s: float = Field(
        default=3600.0,
        gt=0,
        description="How often what is past its retention is deleted (s).",
    )
    match_certain: float = Field(
        default=18.0, description="Match weight (log2 Bayes factor) at or above: certain."
    )
    match_probable: float = Field(
        default=12.0, description="Match weight at or above: probable (auto-linked, flagged)."
    )
    match_possible: float = Field(
        default=6.0, description="Match weight at or above: possible (sent to review)."
    )
    match_max_block_size: int = Field(
        default=200, ge=2, description="Block keys shared by more records are skipped."
    )
    match_lookalike_guards_from_training: bool = Field(
        default=True,
        description=(
            "Let training switch off a look-alike guard (twin, Jr/Sr, household) that its "
            "data refutes; false: every look-alike guard always applies."
        ),
    )

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_redis_is_none(cls, value: object) -> object:
        return None if value in ("", None) else value

    @property
    def embedded(self) -> bool:
        """True when tasks run in-process (no Redis broker configured)."""
        return self.redis_url is None

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    def require_real_secrets(self) -> None:
        """Refuse to start with a placeholder secret, or one too short for HS256, unless
        in demo mode."""
        if self.demo:
            return
        secret = self.secret_key.get_secret_value()
        if secret in PLACEHOLDER_SECRETS:
            raise PlaceholderSecretError(
                "ASKONCE_SECRET_KEY is unset or a placeholder; set a real secret "
                "(or ASKONCE_DEMO=1 for the demo)."
            )
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise PlaceholderSecretError(
                f"ASKONCE_SECRET_KEY is shorter than {MIN_SECRET_BYTES} bytes, the least an "
                "HS256 key may be (RFC 7518 section 3.2); e.g. openssl rand -hex 32."
            )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
