"""form_response: completed forms a patient portal submitted

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24 05:00:00

A portal that pre-filled its form with ``Questionnaire/$populate`` submits the patient's
answers (``POST /fhir/QuestionnaireResponse``). What the answers say about the patient
becomes a source record of the portal's source (values the patient confirmed); the
QuestionnaireResponse itself is kept here, as it came, with the golden record it was
about and the columns its search reads (the form's canonical URL, the status, when it was
authored). Removing the source removes its forms.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.types

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "form_response",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("source_record_id", BigId, nullable=True),
        sa.Column("golden_id", sa.String(36), nullable=False),
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("questionnaire", sa.Text(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("authored", store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resource", store.types.JSONType, nullable=False),
        sa.Column("received_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["source.id"],
            name=op.f("fk_form_response_source_id_source"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_record_id"],
            ["source_record.id"],
            name=op.f("fk_form_response_source_record_id_source_record"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_form_response")),
    )
    op.create_index("ix_form_response_golden", "form_response", ["golden_id"])


def downgrade() -> None:
    op.drop_index("ix_form_response_golden", table_name="form_response")
    op.drop_table("form_response")
