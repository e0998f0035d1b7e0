"""Router: measured answer quality per model and task kind.

Revision ID: 0006_quality
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_quality"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_quality",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("items", sa.Integer, nullable=False),
        sa.Column("correct", sa.Integer, nullable=False),
        sa.Column("rate", sa.Float, nullable=False),
        sa.Column("mean_s", sa.Float, nullable=False),
        sa.Column("eval_set", sa.String(32), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_quality")
