"""Connectors: approved senders, pairing codes, audit log.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connector_senders",
        sa.Column("platform", sa.String(32), primary_key=True),
        sa.Column("sender_id", sa.String(128), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(256), nullable=True),
        sa.Column("chat_id", sa.String(128), nullable=True),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "connector_pairing_codes",
        sa.Column("code", sa.String(16), primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False, index=True),
        sa.Column("sender_id", sa.String(128), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.create_table(
        "connector_audit",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=True),
        sa.Column("sender_id", sa.String(128), nullable=True, index=True),
        sa.Column("decision", sa.String(48), nullable=False),
        sa.Column("detail", sa.String(256), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("connector_audit")
    op.drop_table("connector_pairing_codes")
    op.drop_table("connector_senders")
