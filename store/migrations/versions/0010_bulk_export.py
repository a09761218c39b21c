"""export_job and export_file: Bulk Data ``$export`` for consumers

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 02:00:00

A consumer kicks off an export (``GET /fhir/$export``, ``/fhir/Patient/$export``); a
worker writes its NDJSON files into ``export_file``, one transaction per file together
with the job's ``position``, so an export interrupted anywhere resumes from its last file;
the consumer polls the job and downloads the files until ``expires_at``, after which the
retention job deletes them. The files live in the database, not on a disk, so that the
API process and the workers (on other machines in services mode) see the same files;
they are kept gzip-compressed (100k Patients and 300k Encounters: ~20 MB instead of 184).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.types

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "export_job",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("request_url", sa.Text(), nullable=False),
        sa.Column("params", store.types.JSONType, nullable=False),
        sa.Column("transaction_time", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("position", store.types.JSONType, nullable=False),
        sa.Column("owner", sa.String(36), nullable=True),
        sa.Column("lease_until", store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("expires_at", store.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_job")),
    )
    op.create_index("ix_export_job_client", "export_job", ["client_id", "status"])
    op.create_table(
        "export_file",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("resource_type", sa.String(40), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("content_gzip", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["export_job.id"],
            name=op.f("fk_export_file_job_id_export_job"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_file")),
    )
    op.create_index("ix_export_file_job", "export_file", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_export_file_job", table_name="export_file")
    op.drop_table("export_file")
    op.drop_index("ix_export_job_client", table_name="export_job")
    op.drop_table("export_job")
