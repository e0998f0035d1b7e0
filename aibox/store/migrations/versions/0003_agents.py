"""Agents: inbox, sessions, turns, notes, chat choice, agent states, jobs and job runs.

Revision ID: 0003
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "agent_inbox",
        sa.Column("key", sa.String(320), primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=False),
        sa.Column("sender_id", sa.String(128), nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column("sender_name", sa.String(256), nullable=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("reply_to", sa.String(128), nullable=True),
        sa.Column("is_direct", sa.Boolean, nullable=False),
        sa.Column("mentions_bot", sa.Boolean, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("reply_message_id", sa.String(128), nullable=True),
        sa.Column("answered_at", TZ, nullable=True),
    )
    op.create_table(
        "agent_sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("closed_at", TZ, nullable=True),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("summarised_upto", sa.Integer, nullable=False),
    )
    op.create_index("ix_agent_sessions_chat", "agent_sessions", ["platform", "chat_id", "agent"])
    op.create_table(
        "agent_turns",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.Integer, sa.ForeignKey("agent_sessions.id"), nullable=False, index=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "agent_notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "agent_chat_choice",
        sa.Column("platform", sa.String(32), primary_key=True),
        sa.Column("chat_id", sa.String(128), primary_key=True),
        sa.Column("agent", sa.String(64), nullable=False),
    )
    op.create_table(
        "agent_states",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
    )
    op.create_table(
        "agent_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=False),
        sa.Column("sender_id", sa.String(128), nullable=True),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("schedule", sa.String(256), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_run_at", TZ, nullable=True),
        sa.Column("active", sa.Boolean, nullable=False),
    )
    op.create_table(
        "agent_job_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False, index=True),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("missed", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("agent_job_runs", "agent_jobs", "agent_states", "agent_chat_choice", "agent_notes", "agent_turns", "agent_sessions", "agent_inbox"):
        op.drop_table(table)
