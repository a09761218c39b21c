"""questionnaire: the forms the SDC operations can name by canonical URL

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-24 05:30:00

A portal registers its intake form once (``PUT /fhir/Questionnaire/{id}``); ``$populate``
then takes ``canonical`` or ``questionnaireRef``, and ``$extract`` and a submitted
QuestionnaireResponse find the form by the response's ``questionnaire`` instead of
carrying it along. Nothing is ever fetched from a URL a client names: only forms stored
here resolve.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.types

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "questionnaire",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("resource", store.types.JSONType, nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_questionnaire")),
    )
    op.create_index("ix_questionnaire_url", "questionnaire", ["url", "version"])


def downgrade() -> None:
    op.drop_index("ix_questionnaire_url", table_name="questionnaire")
    op.drop_table("questionnaire")
