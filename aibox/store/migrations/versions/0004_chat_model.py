"""Agents: the model a chat picked with /model.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_chat_model",
        sa.Column("platform", sa.String(32), primary_key=True),
        sa.Column("chat_id", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agent_chat_model")
